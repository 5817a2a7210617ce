"""mLSTM (xLSTM) kernels: chunkwise forward/backward with TFLA-style tiles inside a chunk, and the
decode step (Triton), registered as torch.ops.evo.mlstm_chunkwise_fwd/_bwd and evo.mlstm_step."""
from kernels.mlstm.ops import mlstm_chunkwise, mlstm_step

__all__ = ["mlstm_chunkwise", "mlstm_step"]
