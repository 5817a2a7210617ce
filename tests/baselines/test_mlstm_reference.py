"""The mLSTM references agree with each other in float64: recurrent (token by token),
parallel (quadratic) and chunkwise, outputs and final states, stabilizer included."""
import pytest
import torch

import baselines
from baselines import mlstm

F64 = torch.float64


def inputs(b=2, h=2, t=37, dqk=8, dv=12, seed=0, f_shift=1.0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, h, t, dqk, generator=g, dtype=F64) for _ in range(2))
    v = torch.randn(b, h, t, dv, generator=g, dtype=F64)
    i = 3 * torch.randn(b, h, t, generator=g, dtype=F64)  # wide input gates: the stabilizer matters
    f = torch.randn(b, h, t, generator=g, dtype=F64) + f_shift
    return q, k, v, i, f


@pytest.mark.parametrize("f_shift", [-2.0, 1.0, 4.0])
def test_recurrent_and_parallel_agree(f_shift):
    xs = inputs(f_shift=f_shift)
    h_rec, _ = mlstm.mlstm_recurrent(*xs)
    torch.testing.assert_close(mlstm.mlstm_parallel(*xs), h_rec, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 5, 16, 37, 64])
def test_chunkwise_matches_recurrent_outputs_and_state(chunk):
    xs = inputs()
    h_rec, state_rec = mlstm.mlstm_recurrent(*xs)
    h, state = mlstm.mlstm_chunkwise(*xs, chunk=chunk)
    torch.testing.assert_close(h, h_rec, rtol=1e-10, atol=1e-12)
    for a, b in zip(state, state_rec):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_chunkwise_continues_from_a_state():
    q, k, v, i, f = inputs(t=40)
    whole, state = mlstm.mlstm_chunkwise(q, k, v, i, f, chunk=8)
    first, mid = mlstm.mlstm_chunkwise(q[..., :17, :], k[..., :17, :], v[..., :17, :], i[..., :17], f[..., :17], chunk=8)
    second, end = mlstm.mlstm_chunkwise(q[..., 17:, :], k[..., 17:, :], v[..., 17:, :], i[..., 17:], f[..., 17:],
                                        chunk=8, state=mid)
    torch.testing.assert_close(torch.cat([first, second], -2), whole, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(end[0], state[0], rtol=1e-10, atol=1e-12)


def test_huge_input_gates_do_not_overflow():
    q, k, v, i, f = inputs()
    # exp(800) overflows even float64: only the stabilizer keeps these finite, and h is unchanged
    h = mlstm.mlstm_chunkwise(q, k, v, i + 800.0, f, chunk=8)[0]
    assert torch.isfinite(h).all()
    torch.testing.assert_close(h, mlstm.mlstm_parallel(q, k, v, i + 800.0, f), rtol=1e-9, atol=1e-12)


def test_shape_errors():
    q, k, v, i, f = inputs()
    with pytest.raises(ValueError, match="expected q, k"):
        mlstm.mlstm_parallel(q, k, v, i[..., :-1], f)


def test_tasks_reference_and_inputs():
    fwd = baselines.get_task("mlstm_chunkwise_fwd")
    for shape in fwd.small_shapes:
        xs = fwd.make_inputs(shape, torch.float32, 0, "cpu")
        golden = mlstm.mlstm_parallel(*(x.double() for x in xs))
        torch.testing.assert_close(fwd.reference(*xs).double(), golden, rtol=1e-4, atol=1e-5)
    step = baselines.get_task("mlstm_step")
    shape = step.small_shapes[0]
    q, k, v, i, f, c, n, m = step.make_inputs(shape, torch.float32, 0, "cpu")
    assert c.dtype == torch.float32 and c.shape == (shape["B"], shape["H"], shape["DQK"], shape["DV"])
    h, c2, n2, m2 = step.reference(q, k, v, i, f, c, n, m)
    assert h.shape == v.shape and c2.shape == c.shape and torch.all(m2 >= i.float())
