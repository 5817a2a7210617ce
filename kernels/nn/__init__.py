"""Method layers built from the kernel library (shared/docs/methods.md has the math)."""
from kernels.nn.race import RACEAttention
from kernels.nn.mlstm import MLSTM
from kernels.nn.hybrid_decode import HybridHeadSparseDecode
from kernels.nn.hierarchical import HierarchicalSparseAttention

__all__ = ["RACEAttention", "MLSTM", "HybridHeadSparseDecode", "HierarchicalSparseAttention"]
