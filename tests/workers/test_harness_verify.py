"""The comparison: fp64 with elementwise tolerance AND relative error, NaN never passing,
shape/dtype exactness, and error texts an LLM can act on."""
import pytest
import torch

from baselines.task import Tolerance
from workers.harness.verify import compare, inputs_unchanged

TOL = Tolerance(atol=1e-4, rtol=1e-4, rel=1e-4)


def test_equal_outputs_pass():
    x = torch.randn(4, 5)
    assert compare(x.clone(), x, TOL) is None
    assert compare((x.clone(), x[0].clone()), (x, x[0]), TOL) is None


def test_first_mismatch_is_reported_with_values():
    x = torch.randn(4, 5)
    y = x.clone()
    y[2, 3] += 1.0
    msg = compare(y, x, TOL)
    assert "1 of 20 elements out of tolerance" in msg and "first at index [2, 3]" in msg
    assert f"expected {x[2, 3].item():.6g}" in msg and "max abs error 1" in msg


def test_nan_never_passes_even_against_a_loose_tolerance():
    x = torch.randn(8)
    y = x.clone()
    y[5] = float("nan")
    msg = compare(y, x, Tolerance(atol=1e9, rtol=1e9, rel=1e9))
    assert msg and "NaN" in msg and "index [5]" in msg


def test_relative_error_catches_what_allclose_lets_through():
    # Every element is within atol of a tiny reference, but the result is all zeros.
    ref = torch.full((1000,), 1e-3)
    msg = compare(torch.zeros(1000), ref, Tolerance(atol=2e-3, rtol=0.0, rel=1e-2))
    assert msg and "relative error too large" in msg


@pytest.mark.parametrize("got, words", [
    (torch.zeros(3, 4), "shape (3, 4), expected (4, 3)"),
    (torch.zeros(4, 3, dtype=torch.float64), "dtype torch.float64, expected torch.float32"),
    ([torch.zeros(4, 3)] * 2, "returned 2 output(s), expected 1"),
    (1.0, "is a float, expected a torch.Tensor"),
])
def test_structure_mismatches(got, words):
    assert words in compare(got, torch.zeros(4, 3), TOL)


def test_integer_outputs_must_match_exactly():
    ref = torch.tensor([3, 1, 4])
    assert compare(ref.clone(), ref, TOL) is None
    assert "exact match required" in compare(torch.tensor([3, 2, 4]), ref, TOL)


def test_input_writes_are_detected_bitwise_including_nan():
    x = torch.randn(3, 3)
    snapshot = (x.clone(),)
    assert inputs_unchanged((x,), snapshot) is None
    x[1, 1] = float("nan")
    assert "wrote into its input argument 0" in inputs_unchanged((x,), snapshot)
    assert inputs_unchanged((x,), snapshot, allowed=(0,)) is None
