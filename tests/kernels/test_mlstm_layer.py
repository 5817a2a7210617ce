"""MLSTM against its reference layer (the same projections around the float64 parallel mLSTM of
baselines/mlstm.py), and decode by `step` against the whole-sequence forward (CPU interpreter, fp32)."""
import torch

from baselines import mlstm as ref
from kernels.nn.mlstm import MLSTM


def make_layer():
    torch.manual_seed(0)
    return MLSTM(dim=32, n_heads=2, qk_dim=16, v_dim=32, chunk=16)


def test_forward_matches_reference_layer_and_trains():
    layer = make_layer()
    x = torch.randn(2, 21, 32)
    out = layer(x)
    q, k, v, i, f = (t.transpose(1, 2).double() for t in layer.project(x))
    h = ref.mlstm_parallel(q, k, v, i, f).float().transpose(1, 2)
    torch.testing.assert_close(out, layer.finish(h, x), rtol=1e-4, atol=1e-5)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_step_by_step_decode_equals_forward_and_continues_prefill():
    layer = make_layer()
    x = torch.randn(2, 13, 32)
    with torch.no_grad():
        full = layer(x)
        state = None
        for t in range(9):
            y, state = layer.step(x[:, t], state)
            torch.testing.assert_close(y, full[:, t], rtol=1e-4, atol=1e-5)
        _, prefill_state = layer(x[:, :9], return_state=True)
        for got, want in zip(prefill_state, state):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        y, _ = layer.step(x[:, 9], prefill_state)
        torch.testing.assert_close(y, full[:, 9], rtol=1e-4, atol=1e-5)
