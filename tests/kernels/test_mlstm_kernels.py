"""mLSTM Triton kernels (kernels/mlstm) against the float64 references of baselines/mlstm.py
under the CPU interpreter, fp32, tiny shapes: chunkwise forward (outputs and final state) and
gradients for q, k, v, i, f, over chunk boundaries, several tiles per chunk, odd lengths; the
decode step; the torch.library ops (opcheck, torch.compile)."""
import pytest
import torch

from baselines import mlstm as ref
from kernels.mlstm import mlstm_chunkwise, mlstm_step
from kernels.mlstm.ops import mlstm_chunkwise_fwd_op, mlstm_step_op

F64 = torch.float64


def inputs(b=1, h=2, t=37, dqk=16, dv=32, seed=0, f_shift=2.0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, h, t, dqk, generator=g) for _ in range(2))
    v = torch.randn(b, h, t, dv, generator=g)
    i = 2 * torch.randn(b, h, t, generator=g)
    f = torch.randn(b, h, t, generator=g) + f_shift
    return q, k, v, i, f


def rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


CASES = [  # chunk = tile: one tile per chunk; chunk > tile: TFLA-style tiles inside the chunk
    pytest.param(dict(t=37), 16, 16, id="T37-chunk16"),
    pytest.param(dict(t=70, dqk=32, dv=16, b=2, h=1), 32, 16, id="T70-chunk32-tile16"),
    pytest.param(dict(t=64, f_shift=-1.0), 64, 32, id="T64-one-chunk-fast-forgetting"),
    pytest.param(dict(t=9), 32, 16, id="T9-shorter-than-a-chunk"),
]


@pytest.mark.parametrize("shape,chunk,tile", CASES)
def test_chunkwise_forward_state_and_gradients_match_reference(shape, chunk, tile):
    xs = inputs(**shape)
    leaves64 = [x.double().requires_grad_(True) for x in xs]
    golden = ref.mlstm_parallel(*leaves64)
    dh = torch.randn_like(golden)
    golden_grads = torch.autograd.grad(golden, leaves64, dh)
    _, golden_state = ref.mlstm_recurrent(*(x.double() for x in xs))
    leaves = [x.clone().requires_grad_(True) for x in xs]
    h, state = mlstm_chunkwise(*leaves, chunk=chunk, tile=tile, return_state=True)
    assert rel(h, golden) < 1e-5
    for got, want in zip(state, golden_state):
        assert rel(got, want) < 1e-5
    for name, got, want in zip("qkvif", torch.autograd.grad(h, leaves, dh.float()), golden_grads):
        assert rel(got, want) < 2e-5, name


def test_small_blocks(monkeypatch):
    # below SCAN_MIN_PROGRAMS the scan switches to the small blocks: here 2 x 2 tiles of the state; attends with
    # two DV blocks per row (the backward's row dots then taken outside the kernel)
    from kernels.mlstm import chunk_fwd
    xs = inputs(t=40, dqk=32, dv=32)
    monkeypatch.setattr(chunk_fwd, "BLOCK_N", 16)
    monkeypatch.setattr(chunk_fwd, "SCAN_MIN_PROGRAMS", 10 ** 9)
    monkeypatch.setattr(chunk_fwd, "SMALL_STATE_BLOCK_K", 16)
    monkeypatch.setattr(chunk_fwd, "SMALL_STATE_BLOCK_N", 16)
    leaves64 = [x.double().requires_grad_(True) for x in xs]
    golden = ref.mlstm_parallel(*leaves64)
    dh = torch.randn_like(golden)
    golden_grads = torch.autograd.grad(golden, leaves64, dh)
    leaves = [x.clone().requires_grad_(True) for x in xs]
    h = mlstm_chunkwise(*leaves, chunk=16, tile=16)
    assert rel(h, golden) < 1e-5
    for name, got, want in zip("qkvif", torch.autograd.grad(h, leaves, dh.float()), golden_grads):
        assert rel(got, want) < 2e-5, name


def test_step_matches_reference_and_continues_a_prefill():
    q, k, v, i, f = inputs(t=12)
    h_pre, state = mlstm_chunkwise(q[..., :11, :], k[..., :11, :], v[..., :11, :], i[..., :11], f[..., :11],
                                   chunk=16, return_state=True)
    h, c, n, m = mlstm_step(q[..., 11, :], k[..., 11, :], v[..., 11, :], i[..., 11], f[..., 11], *state)
    golden, (gc, gn, gm) = ref.mlstm_recurrent(*(x.double() for x in (q, k, v, i, f)))
    assert rel(h, golden[..., 11, :]) < 1e-5
    for got, want in zip((c, n, m), (gc, gn, gm)):  # the same stabilizer m, so C and n scale alike
        assert rel(got, want) < 1e-5


def test_opcheck_and_torch_compile():
    xs = inputs(t=20, dv=16)
    leaves = [x.requires_grad_(True) for x in xs]
    torch.library.opcheck(mlstm_chunkwise_fwd_op, (*leaves, 16, 16))
    c, n, m = ref.zero_state(xs[0][..., 0, :].detach(), 16)
    step_inputs = [x[..., 0, :].detach() if x.dim() == 4 else x[..., 0].detach() for x in xs]
    torch.library.opcheck(mlstm_step_op, (*step_inputs, c + 0.5, n + 0.5, m))
    compiled = torch.compile(mlstm_chunkwise, backend="aot_eager", fullgraph=True)
    out = compiled(*leaves, chunk=16)
    eager = mlstm_chunkwise(*leaves, chunk=16)
    torch.testing.assert_close(out, eager)
    for got, want in zip(torch.autograd.grad(out.sum(), leaves), torch.autograd.grad(eager.sum(), leaves)):
        torch.testing.assert_close(got, want)


def test_bad_inputs_are_rejected():
    q, k, v, i, f = inputs(dqk=24)
    with pytest.raises(ValueError, match="power of two"):
        mlstm_chunkwise(q, k, v, i, f)
    q, k, v, i, f = inputs()
    with pytest.raises(ValueError, match="multiple of the tile"):
        mlstm_chunkwise(q, k, v, i, f, chunk=48, tile=32)
    c, n, m = ref.zero_state(q[..., 0, :], 32)
    with pytest.raises(ValueError, match="fp32"):
        mlstm_step(q[..., 0, :], k[..., 0, :], v[..., 0, :], i[..., 0], f[..., 0], c.double(), n, m)
