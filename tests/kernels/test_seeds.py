"""Seed kernels against their tasks' references under the Triton CPU interpreter
(TRITON_INTERPRET=1, set in tests/conftest.py; fp32 and fp16, tiny shapes); their loop paths
with blocks forced smaller than a row; every declared tunable value; the library's torch ops
(opcheck); the CUDA seed through nvcc, compile-only."""
import os
import shutil
import subprocess
from importlib import import_module
from pathlib import Path

import pytest
import torch

import baselines
import kernels
from evo.strategies.tune import parse_tunables
from workers.harness.verify import clone_inputs, compare, tolerance_for

TASKS = {t.name: t for t in baselines.all_tasks()}
OPERATORS = ["softmax", "rmsnorm", "layernorm", "rope", "swiglu", "cross_entropy", "add_rmsnorm",
             "matmul_bias_gelu", "argmax", "decode_attention"]
INTERPRETER_DTYPES = (torch.float32, torch.float16)  # the interpreter is wrong for bf16


def check_seed(task, module, shape, dtype, seed):
    inputs = task.make_inputs(shape, dtype, seed, "cpu")
    expected = task.reference(*inputs)
    got = module.entry(*clone_inputs(inputs))
    problem = compare(got, expected, tolerance_for(task, dtype))
    assert problem is None, f"{task.name} {shape} {dtype} seed {seed}: {problem}"


def test_the_interpreter_is_on():
    assert os.environ.get("TRITON_INTERPRET") == "1"


def interpreter_dtypes(task):
    """fp32, plus fp16 standing in for bf16 where the task has a half-precision dtype (as the harness does)."""
    wants_half = any(d in (torch.float16, torch.bfloat16) for d in task.dtypes)
    return [d for d in INTERPRETER_DTYPES if d == torch.float32 or wants_half]


@pytest.mark.parametrize("name,dtype", [pytest.param(n, d, id=f"{n}-{d}".replace("torch.", ""))
                                        for n in sorted(TASKS) for d in interpreter_dtypes(TASKS[n])])
def test_seed_matches_reference(name, dtype):
    task = TASKS[name]
    module = import_module(task.seed)
    for shape in task.small_shapes:
        for seed in (0, 1):
            check_seed(task, module, shape, dtype, seed)


# Blocks far below the small shapes' row lengths, so every loop runs several chunks and
# ends in a partial one (the masked lanes of online max/sum updates, ties split across
# chunks for argmax). Values outside the declared tunables: the interpreter does not care.
SMALL_BLOCKS = {
    "softmax": {"MAX_SINGLE_BLOCK": 16, "LOOP_BLOCK": 32},
    "rmsnorm": {"BLOCK": 16},
    "layernorm": {"BLOCK": 16},
    "add_rmsnorm": {"BLOCK": 16},
    "cross_entropy": {"BLOCK": 16},
    "argmax": {"BLOCK": 16},
    "swiglu": {"BLOCK": 64},
    "rope": {"BLOCK_H": 2},
    "decode_attention": {"BLOCK_S": 16},
    "matmul_bias_gelu": {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2},
}


@pytest.mark.parametrize("name", OPERATORS)
def test_seed_loops_over_several_blocks(name, monkeypatch):
    task = TASKS[name]
    module = import_module(task.seed)
    for constant, value in SMALL_BLOCKS[name].items():
        assert hasattr(module, constant), f"{task.seed} has no {constant}"
        monkeypatch.setattr(module, constant, value)
    for shape in task.small_shapes:
        for dtype in INTERPRETER_DTYPES:
            check_seed(task, module, shape, dtype, 2)


@pytest.mark.parametrize("name", OPERATORS)
def test_every_declared_tunable_value_works(name, monkeypatch):
    task = TASKS[name]
    module = import_module(task.seed)
    tunables = parse_tunables(Path(module.__file__).read_text())
    assert tunables, f"{task.seed} declares no tunables"
    for tunable in tunables.values():
        assert tunable.value in tunable.choices, f"{tunable.name} = {tunable.value} is not among its choices"
        if tunable.name.startswith("NUM_"):
            continue  # warps and stages mean nothing to the interpreter
        for choice in tunable.choices:
            with monkeypatch.context() as m:
                m.setattr(module, tunable.name, choice)
                check_seed(task, module, task.small_shapes[-1], torch.float32, 0)


# ---- the library: torch ops ---------------------------------------------------------------
OPS = {"softmax": "softmax", "rms_norm": "rmsnorm", "layer_norm": "layernorm", "rope": "rope",
       "swiglu": "swiglu", "cross_entropy": "cross_entropy", "add_rms_norm": "add_rmsnorm",
       "matmul_bias_gelu": "matmul_bias_gelu", "argmax": "argmax", "decode_attention": "decode_attention"}


def test_library_exports_one_op_per_operator_task():
    assert sorted(kernels.__all__) == sorted(OPS)
    assert sorted(OPS.values()) == sorted(OPERATORS)
    assert import_module("kernels.softmax").entry is not None  # the module stays reachable by its dotted path


@pytest.mark.parametrize("op_name", sorted(OPS))
def test_op_passes_opcheck_and_matches_reference(op_name):
    op = getattr(kernels, op_name)
    assert getattr(torch.ops.evo, op_name) is not None
    task = TASKS[OPS[op_name]]
    inputs = task.make_inputs(task.small_shapes[-1], torch.float32, 0, "cpu")
    torch.library.opcheck(op, inputs)
    problem = compare(op(*inputs), task.reference(*inputs), tolerance_for(task, torch.float32))
    assert problem is None, problem


# ---- the CUDA seed ------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_cuda_seed_compiles_with_nvcc(tmp_path):
    from kernels.rmsnorm_cuda import CUDA_SOURCE
    source = tmp_path / "rmsnorm.cu"
    source.write_text(CUDA_SOURCE)
    cubin = tmp_path / "rmsnorm.cubin"
    done = subprocess.run(["nvcc", "-arch=sm_90", "-cubin", "-std=c++17", "-o", str(cubin), str(source)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    symbols = cubin.read_bytes()
    for kernel in (b"rmsnorm_f32", b"rmsnorm_bf16"):  # extern "C": found by these exact names
        assert kernel in symbols


def test_cuda_seed_refuses_unsupported_dtypes_clearly():
    from kernels.rmsnorm_cuda import entry
    x = torch.ones(2, 8, dtype=torch.float16)
    with pytest.raises(TypeError, match="float32 and bfloat16"):
        entry(x, x[0])
