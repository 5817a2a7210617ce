"""Every registered task keeps the contract the harness and the engine rely on: complete
metadata, deterministic non-degenerate inputs with the declared shapes, a finite reference
that meets its own tolerance against a float64 golden, positive FLOP and byte counts."""
import importlib.util
import re

import pytest
import torch

import baselines
from workers.harness.guards import resolve
from workers.harness.verify import compare, tolerance_for

TASKS = {t.name: t for t in baselines.all_tasks()}
# The ten operator tasks of issue 2, with the names and signatures the brief fixed.
OPERATORS = ["softmax", "rmsnorm", "layernorm", "rope", "swiglu", "cross_entropy", "add_rmsnorm",
             "matmul_bias_gelu", "argmax", "decode_attention"]
CPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # torch references all run on CPU


def _cases(names, *shape_sets):
    return [pytest.param(name, shape, id=f"{name}-{TASKS[name].shape_key(shape)}")
            for name in names for attr in shape_sets for shape in getattr(TASKS[name], attr)]


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


_TENSOR = re.compile(r"Tensor\[([^\]]*)\]")


def declared_shapes(signature: str, shape: dict) -> tuple[list, list]:
    """The tensor shapes a signature such as "entry(x: Tensor[T, D/2]) -> Tensor[T]" declares,
    in argument order, with the shape's sizes substituted."""
    arguments, arrow, returns = signature.partition("->")
    assert arrow, f"signature {signature!r} has no '->'"

    def sizes(text):
        result = []
        for dims in _TENSOR.findall(text):
            values = [eval(d, {"__builtins__": {}}, dict(shape)) for d in dims.split(",") if d.strip()]  # noqa: S307
            assert all(v == int(v) for v in values), f"{dims} is fractional for {shape}"
            result.append(tuple(int(v) for v in values))
        return result

    return sizes(arguments), sizes(returns)


def test_the_ten_operator_tasks_exist():
    assert set(OPERATORS) <= set(TASKS)
    assert TASKS["softmax"].signature.startswith("entry(x: Tensor[M, N])")
    assert TASKS["rmsnorm"].signature.startswith("entry(x: Tensor[M, N], weight: Tensor[N])")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_metadata_is_complete(name):
    task = TASKS[name]
    assert len(task.description) > 80 and task.signature.startswith("entry(")
    assert task.shapes and task.check_shapes and task.small_shapes
    for shape in [*task.shapes, *task.check_shapes, *task.small_shapes]:
        assert all(isinstance(v, int) for v in shape.values()), shape
        for dtype in task.dtypes:
            assert task.flops(shape) > 0 and task.bytes(shape, dtype) > 0
    assert importlib.util.find_spec(task.seed) is not None, f"seed module {task.seed} not found"
    for dtype in (*task.dtypes, torch.float32, torch.float16):  # fp16: the CPU interpreter's dtype
        tolerance_for(task, dtype)  # raises KeyError when missing
    unresolved = [f for f in task.forbidden if resolve(f) is None]
    assert not unresolved, f"forbidden names that name nothing (typos?): {unresolved}"


def _same_bits(a, b) -> bool:
    """Bitwise equality, so deliberate NaN padding in inputs compares equal to itself."""
    if not isinstance(a, torch.Tensor):
        return a == b
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


@pytest.mark.parametrize("name,shape", _cases(sorted(TASKS), "small_shapes"))
def test_inputs_are_deterministic_and_nondegenerate(name, shape):
    task = TASKS[name]
    for dtype in (torch.float32, torch.bfloat16):
        first, again, other = (task.make_inputs(shape, dtype, s, "cpu") for s in (0, 0, 1))
        assert all(_same_bits(a, b) for a, b in zip(first, again)), "same seed, different inputs"
        assert not all(_same_bits(a, b) for a, b in zip(first, other)), "seeds 0 and 1 give the same inputs"
        floats = [t for t in first if isinstance(t, torch.Tensor) and t.is_floating_point()]
        assert floats and all(t.count_nonzero() > 0 for t in floats), "an input is all zeros"
        for out in _as_tuple(task.reference(*first)):
            assert not out.is_floating_point() or torch.isfinite(out).all(), "reference output has NaN/Inf"


# Stricter checks for the operator tasks of this module's owner (other task modules have
# their own conventions: mixed-dtype inputs, NaN-poisoned padding, index tensors).

@pytest.mark.parametrize("name,shape", _cases(OPERATORS, "small_shapes", "check_shapes"))
def test_operator_inputs_match_the_signature(name, shape):
    task = TASKS[name]
    for dtype in (torch.float32, torch.bfloat16):
        inputs = task.make_inputs(shape, dtype, 0, "cpu")
        for i, t in enumerate(inputs):
            if t.is_floating_point():
                assert t.dtype == dtype, f"input {i} is {t.dtype}, asked for {dtype}"
                assert torch.isfinite(t).all(), f"input {i} has NaN/Inf"
        declared_in, declared_out = declared_shapes(task.signature, shape)
        assert [tuple(t.shape) for t in inputs] == declared_in, task.signature
        outputs = _as_tuple(task.reference(*inputs))
        assert [tuple(t.shape) for t in outputs] == declared_out, task.signature


@pytest.mark.parametrize("name", OPERATORS)
def test_operator_bytes_are_every_input_read_and_output_written_once(name):
    task = TASKS[name]
    for shape in task.small_shapes:
        inputs = task.make_inputs(shape, torch.float32, 0, "cpu")
        outputs = _as_tuple(task.reference(*inputs))
        moved = sum(t.numel() * t.element_size() for t in (*inputs, *outputs))
        assert task.bytes(shape, torch.float32) == moved


@pytest.mark.parametrize("name,shape", _cases(OPERATORS, "small_shapes", "check_shapes"))
def test_operator_reference_meets_its_own_tolerance(name, shape):
    """The eager reference in each dtype against the same reference on float64 inputs: if
    eager PyTorch cannot pass the tolerance, no kernel should be asked to."""
    task = TASKS[name]
    for dtype in CPU_DTYPES:
        inputs = task.make_inputs(shape, dtype, 3, "cpu")
        golden = task.reference(*(t.double() if t.is_floating_point() else t for t in inputs))
        got = task.reference(*inputs)
        as64 = lambda outs: tuple(t.double() if t.is_floating_point() else t for t in _as_tuple(outs))  # noqa: E731
        problem = compare(as64(got), as64(golden), tolerance_for(task, dtype))
        assert problem is None, f"{dtype}: {problem}"
