"""The kernel library: `from kernels import rms_norm` gives the torch op (evo::rms_norm) that
runs the best kernel evolved so far for its task.

Each task's implementation is the candidate-format module kernels/<task>.py. Where an op's
friendly name equals its module's name (softmax, rope, swiglu, ...), the package attribute
is the op: load an implementation module with importlib.import_module("kernels.<task>")
or `from kernels.<task> import entry`, not `import kernels.<task> as m`.
"""
from kernels.ops import (add_rms_norm, argmax, cross_entropy, decode_attention, layer_norm, matmul_bias_gelu,
                         rms_norm, rope, softmax, swiglu)

__all__ = ["add_rms_norm", "argmax", "cross_entropy", "decode_attention", "layer_norm", "matmul_bias_gelu",
           "rms_norm", "rope", "softmax", "swiglu"]
