"""The RACE references agree with each other in float64: quadratic vs sketch (prefix sums) vs
chunked, causal and not, both normalizations."""
import math

import pytest
import torch

import baselines
from baselines import race

F64 = torch.float64


def inputs(b=1, h=2, t=37, d=16, p=2, n_tables=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, t, d, generator=g, dtype=F64) for _ in range(3))
    return q, k, v, torch.randn(n_tables, p, d, generator=g, dtype=F64)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("normalization", race.NORMALIZATIONS)
@pytest.mark.parametrize("p,n_tables", [(2, 2), (3, 3), (4, 1)])
def test_quadratic_and_sketch_forms_agree(causal, normalization, p, n_tables):
    q, k, v, w = inputs(p=p, n_tables=n_tables)
    a = race.race_attention(q, k, v, w, causal=causal, normalization=normalization)
    b = race.race_attention_sketch(q, k, v, w, causal=causal, normalization=normalization)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 8, 37, 64])
def test_chunked_causal_matches_quadratic(chunk):
    q, k, v, w = inputs(t=37)
    torch.testing.assert_close(race.race_causal_chunked(q, k, v, w, chunk=chunk), race.race_attention(q, k, v, w),
                               rtol=1e-12, atol=1e-12)


def test_soft_hash_is_a_softmax_per_table_and_a_product_of_sigmoids():
    q, _, _, w = inputs(p=3, n_tables=2)
    phi = race.soft_hash(q, w)
    assert phi.shape == (*q.shape[:-1], 2 * 8)
    torch.testing.assert_close(phi.view(*q.shape[:-1], 2, 8).sum(-1), torch.ones(*q.shape[:-1], 2, dtype=F64))
    # the identity the kernels use: softmax_r(beta t . v_r) = prod_p sigmoid(2 beta v_r[p] t_p)
    beta = 1 / math.sqrt(q.shape[-1])
    t = torch.tanh(torch.einsum("...d,lpd->...lp", q, w))
    signs = race.corners(3, F64)
    prod = torch.sigmoid(2 * beta * t[..., None, :] * signs).prod(-1)  # (..., L, R)
    torch.testing.assert_close(phi, prod.flatten(-2))


def test_normalizations_are_convex_combinations():
    q, k, _, w = inputs()
    ones = torch.full((*q.shape[:-1], 5), 3.0, dtype=F64)  # every value 3: every output must be 3
    for normalization in race.NORMALIZATIONS:
        out = race.race_attention(q, k, ones, w, normalization=normalization)
        # per-bucket divides by A + eps, so it is 3 up to eps / A
        torch.testing.assert_close(out, ones, rtol=1e-5 if normalization == "bucket" else 1e-12, atol=0)


def test_causal_last_token_equals_non_causal():
    q, k, v, w = inputs()
    for normalization in race.NORMALIZATIONS:
        causal = race.race_attention(q, k, v, w, causal=True, normalization=normalization)
        full = race.race_attention(q, k, v, w, causal=False, normalization=normalization)
        torch.testing.assert_close(causal[..., -1, :], full[..., -1, :], rtol=1e-12, atol=1e-12)
        assert not torch.allclose(causal[..., 0, :], full[..., 0, :])


def test_bad_inputs_are_rejected():
    q, k, v, w = inputs()
    with pytest.raises(ValueError, match="normalization"):
        race.race_attention(q, k, v, w, normalization="per-bucket")
    with pytest.raises(ValueError, match="w must be"):
        race.race_attention(q, k, v, w[..., :8])
    with pytest.raises(ValueError, match="one shape"):
        race.race_attention(q, k[..., :5, :], v, w)


def test_task_reference_and_inputs():
    task = baselines.get_task("race_causal")
    for shape in task.small_shapes:
        q, k, v, w = task.make_inputs(shape, torch.float32, 0, "cpu")
        assert q.shape == (shape["B"], shape["H"], shape["T"], shape["D"]) and w.shape == (shape["L"], shape["P"], shape["D"])
        out = task.reference(q, k, v, w)
        golden = race.race_attention(q.double(), k.double(), v.double(), w.double())
        torch.testing.assert_close(out.double(), golden, rtol=1e-4, atol=1e-5)
        assert task.flops(shape) > 0 and task.bytes(shape, torch.bfloat16) > 0
