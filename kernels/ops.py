"""The kernel library as torch ops (namespace "evo"). Each op runs the current best
implementation of its task, the `entry` of kernels/<task>.py (the seed until `evo export`
writes a winner there). Fake implementations give output shapes and dtypes without running
a kernel, so the ops trace under torch.compile. Forward only: no autograd formulas."""
from importlib import import_module

import torch

# import_module, not `from kernels import softmax`: the package binds those names to the ops.
_softmax = import_module("kernels.softmax")
_rmsnorm = import_module("kernels.rmsnorm")
_layernorm = import_module("kernels.layernorm")
_add_rmsnorm = import_module("kernels.add_rmsnorm")
_rope = import_module("kernels.rope")
_swiglu = import_module("kernels.swiglu")
_cross_entropy = import_module("kernels.cross_entropy")
_matmul_bias_gelu = import_module("kernels.matmul_bias_gelu")
_argmax = import_module("kernels.argmax")
_decode_attention = import_module("kernels.decode_attention")

Tensor = torch.Tensor


@torch.library.custom_op("evo::softmax", mutates_args=())
def softmax(x: Tensor) -> Tensor:
    return _softmax.entry(x)


@torch.library.custom_op("evo::rms_norm", mutates_args=())
def rms_norm(x: Tensor, weight: Tensor) -> Tensor:
    return _rmsnorm.entry(x, weight)


@torch.library.custom_op("evo::layer_norm", mutates_args=())
def layer_norm(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return _layernorm.entry(x, weight, bias)


@torch.library.custom_op("evo::add_rms_norm", mutates_args=())
def add_rms_norm(x: Tensor, residual: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    return _add_rmsnorm.entry(x, residual, weight)


@add_rms_norm.register_fake
def _(x, residual, weight):
    return torch.empty_like(x), torch.empty_like(x)


@torch.library.custom_op("evo::rope", mutates_args=())
def rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return _rope.entry(x, cos, sin)


@torch.library.custom_op("evo::swiglu", mutates_args=())
def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    return _swiglu.entry(gate, up)


@torch.library.custom_op("evo::cross_entropy", mutates_args=())
def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return _cross_entropy.entry(logits, targets)


@cross_entropy.register_fake
def _(logits, targets):
    return logits.new_empty((), dtype=torch.float32)


@torch.library.custom_op("evo::matmul_bias_gelu", mutates_args=())
def matmul_bias_gelu(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return _matmul_bias_gelu.entry(x, w, b)


@matmul_bias_gelu.register_fake
def _(x, w, b):
    return x.new_empty((x.shape[0], w.shape[1]))


@torch.library.custom_op("evo::argmax", mutates_args=())
def argmax(logits: Tensor) -> Tensor:
    return _argmax.entry(logits)


@argmax.register_fake
def _(logits):
    return logits.new_empty(logits.shape[:-1], dtype=torch.int64)


@torch.library.custom_op("evo::decode_attention", mutates_args=())
def decode_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return _decode_attention.entry(q, k, v)


def _like_first(x, *_):
    return torch.empty_like(x)


# the ops whose output has the shape, dtype and device of their first argument
for _op in (softmax, rms_norm, layer_norm, rope, swiglu, decode_attention):
    _op.register_fake(_like_first)
