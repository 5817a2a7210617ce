"""RACE attention kernels: fused soft hashing + chunked causal linear-attention scan (Triton).
`race_causal` is differentiable and registered as torch.ops.evo.race_causal_fwd/_bwd."""
from kernels.race.ops import race_causal

__all__ = ["race_causal"]
