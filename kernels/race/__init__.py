"""RACE attention kernels: soft hashing fused into a chunked linear-attention scan (Triton),
differentiable, registered as torch.ops.evo.race_fwd / race_bwd."""
from kernels.race.ops import race_attention, race_causal

__all__ = ["race_attention", "race_causal"]
