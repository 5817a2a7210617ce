"""The AST scan: forbidden ops through every alias form, and the other refusals."""
import pytest

from workers.harness.static_checks import check

SOFTMAX = ("torch.softmax", "torch.nn.functional.softmax", "torch.Tensor.softmax")
ARGMAX = ("torch.argmax", "torch.Tensor.argmax")


@pytest.mark.parametrize("source", [
    "import torch\ndef entry(x): return torch.softmax(x, -1)",
    "import torch as t\ndef entry(x): return t.softmax(x, -1)",
    "import torch.nn.functional as F\ndef entry(x): return F.softmax(x, -1)",
    "from torch.nn import functional as F\ndef entry(x): return F.softmax(x, -1)",
    "from torch.nn.functional import softmax as s\ndef entry(x): return s(x, -1)",
    "import torch\nf = torch.nn.functional\ng = f\ndef entry(x): return g.softmax(x, -1)",
    "import torch\nsm = getattr(torch, 'softmax')\ndef entry(x): return sm(x, -1)",
    "import torch\ndef entry(x): return x.softmax(-1)",
    "import torch\ndef entry(x): return getattr(x, 'softmax')(-1)",
])
def test_forbidden_op_in_any_spelling(source):
    found = check(source, SOFTMAX)
    assert found and all("forbids" in f for f in found), found


def test_triton_namesake_of_a_forbidden_tensor_method_is_allowed():
    source = "import triton.language as tl\nimport torch\ndef k(x):\n    return tl.argmax(x, 0)\n"
    assert check(source, ARGMAX) == []
    assert check("import torch\ndef entry(x): return x.argmax(-1)", ARGMAX)


@pytest.mark.parametrize("source, words", [
    ("import threading", "imports threading"),
    ("import multiprocessing", "imports multiprocessing"),
    ("import subprocess", "imports subprocess"),
    ("import os\nos.fork()", "imports os"),
    ("import ctypes", "imports ctypes"),
    ("import socket", "imports socket"),
    ("import urllib.request", "imports urllib.request"),
    ("from baselines.softmax import reference", "the reference and the kernel library are off limits"),
    ("import kernels.softmax", "off limits"),
    ("import torch\ns = torch.cuda.Stream()", "own CUDA stream"),
    ("import torch\nwith torch.cuda.stream(None): pass", "own CUDA stream"),
    ("import torch.multiprocessing as mp", "starts processes or threads"),
    ("import torch\ntorch.cuda.synchronize = lambda: None", "assigns to torch.cuda.synchronize"),
    ("import torch\nsetattr(torch.cuda, 'synchronize', None)", "patching library attributes"),
    ("import torch\ntorch.backends.cuda.matmul.allow_tf32 = True", "assigns to torch.backends.cuda.matmul.allow_tf32"),
    ("import triton.testing\ntriton.testing.do_bench = None", "timing utilities"),
    ("open('/etc/passwd')", "open()"),
    ("exec('x = 1')", "exec()"),
    ("eval('1')", "eval()"),
    ("import torch\ntorch.save({}, 'x.pt')", "reads or writes files"),
    ("import torch\nf = torch.compile(lambda x: x)", "instead of a Triton/CUDA kernel"),
    ("import torch\ntorch.ops.aten._softmax", "torch.ops"),
    ("import torch\ntorch._C._set_something(1)", "private internals"),
    ("import torch\nx = torch.__dict__", "interpreter internals"),
    ("import torch\nname = 'soft' + 'max'\nf = getattr(torch, name)", "computed attribute name"),
    ("from . import helper", "relative import"),
])
def test_refusals(source, words):
    found = check(source)
    assert any(words in f for f in found), found


def test_clean_kernel_module_passes():
    from pathlib import Path
    seed = (Path(__file__).resolve().parents[2] / "kernels" / "softmax.py").read_text()
    assert check(seed, SOFTMAX) == []


def test_cuda_candidate_needs_cuda_source():
    assert any("CUDA_SOURCE" in f for f in check("import torch\ndef entry(x): return x", language="cuda"))
    assert check("CUDA_SOURCE = 'extern \"C\" __global__ void k() {}'\ndef entry(x): return x", language="cuda") == []


def test_syntax_error_raises():
    with pytest.raises(SyntaxError):
        check("def entry(x) return x")
