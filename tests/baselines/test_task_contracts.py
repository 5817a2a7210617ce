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


def _cases(*shape_sets):
    return [pytest.param(name, shape, id=f"{name}-{TASKS[name].shape_key(shape)}")
            for name in TASKS for attr in shape_sets for shape in getattr(TASKS[name], attr)]


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
        tolerance_for(task, dtype)
    unresolved = [f for f in task.forbidden if resolve(f) is None]
    assert not unresolved, f"forbidden names that name nothing (typos?): {unresolved}"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_minimal_bytes_cover_inputs_and_outputs(name):
    """`bytes` is the fewest bytes any implementation must move: at least every input read once
    and every output written once, at the smallest shapes where that is checkable on CPU."""
    task = TASKS[name]
    shape = task.small_shapes[-1]
    inputs = task.make_inputs(shape, torch.float32, 0, "cpu")
    outputs = _as_tuple(task.reference(*inputs))
    moved = sum(t.numel() * t.element_size() for t in (*inputs, *outputs) if isinstance(t, torch.Tensor))
    # Inputs that only index (int targets, positions) may be counted at their own size.
    assert task.bytes(shape, torch.float32) == pytest.approx(moved, rel=0.01), \
        f"bytes() says {task.bytes(shape, torch.float32)}, the tensors hold {moved}"


@pytest.mark.parametrize("name,shape", _cases("small_shapes", "check_shapes"))
def test_inputs_are_deterministic_nondegenerate_and_declared(name, shape):
    task = TASKS[name]
    for dtype in (torch.float32, torch.bfloat16):
        first, again, other = (task.make_inputs(shape, dtype, s, "cpu") for s in (0, 0, 1))
        assert all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b for a, b in zip(first, again)), \
            "same seed, different inputs"
        floats = [i for i, t in enumerate(first) if isinstance(t, torch.Tensor) and t.is_floating_point()]
        assert floats, "no floating-point input"
        assert any(not torch.equal(first[i], other[i]) for i in floats if first[i].numel() > 1) or \
            all(first[i].numel() == 1 for i in floats), "seed 0 and seed 1 give the same inputs"
        for i in floats:
            assert first[i].dtype == dtype, f"input {i} is {first[i].dtype}, asked for {dtype}"
            assert torch.isfinite(first[i]).all(), f"input {i} has NaN/Inf"
            assert first[i].count_nonzero() > 0, f"input {i} is all zeros"
        declared_in, declared_out = declared_shapes(task.signature, shape)
        tensors_in = [t for t in first if isinstance(t, torch.Tensor)]
        assert [tuple(t.shape) for t in tensors_in] == declared_in, task.signature
        outputs = _as_tuple(task.reference(*first))
        assert [tuple(t.shape) for t in outputs] == declared_out, task.signature
        for out in outputs:
            assert out.is_floating_point() is False or torch.isfinite(out).all(), "reference output has NaN/Inf"


@pytest.mark.parametrize("name,shape", _cases("small_shapes", "check_shapes"))
def test_reference_meets_its_own_tolerance(name, shape):
    """The eager reference in each dtype against the same reference in float64: if eager
    PyTorch cannot pass the tolerance, no kernel should be asked to."""
    task = TASKS[name]
    for dtype in CPU_DTYPES:
        inputs = task.make_inputs(shape, dtype, 3, "cpu")
        golden = task.reference(*(t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                                  for t in inputs))
        got = tuple(t.double() if t.is_floating_point() else t for t in _as_tuple(task.reference(*inputs)))
        problem = compare(got, _as_tuple(golden), tolerance_for(task, dtype))
        assert problem is None, f"{dtype}: {problem}"
