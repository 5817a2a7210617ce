"""RACE Triton kernels (kernels/race) against the float64 references of baselines/race.py under
the CPU interpreter, fp32, tiny shapes: forward and gradients, chunk and segment boundaries,
odd lengths, causal and not; the torch.library op (opcheck, torch.compile)."""
import pytest
import torch

from baselines import race as ref
from kernels.race import race_attention
from kernels.race.chunk_fwd import entry
from kernels.race.ops import race_fwd_op

F64 = torch.float64


def inputs(b=1, h=2, t=37, d=16, p=2, n_tables=2, dv=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, h, t, d, generator=g) for _ in range(2))
    v = torch.randn(b, h, t, dv or d, generator=g)
    return q, k, v, torch.randn(n_tables, p, d, generator=g)


def rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


def check_forward_and_gradients(shape, chunk, seg_chunks, causal):
    """race_attention's output and q, k, v gradients against float64 autograd of the reference; returns the
    inputs and the reference output."""
    q, k, v, w = inputs(**shape)
    leaves64 = [x.double().requires_grad_(True) for x in (q, k, v)]
    golden = ref.race_attention(*leaves64, w.double(), causal=causal)
    do = torch.randn_like(golden)
    golden_grads = torch.autograd.grad(golden, leaves64, do)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    out = race_attention(*leaves, w, causal=causal, chunk=chunk, seg_chunks=seg_chunks)
    assert rel(out, golden) < 1e-5
    for name, got, want in zip("qkv", torch.autograd.grad(out, leaves, do.float()), golden_grads):
        assert rel(got, want) < 1e-5, name
    return (q, k, v, w), golden


CASES = [  # (shape, chunk, seg_chunks): one segment, several, a partial last chunk, T < chunk
    pytest.param(dict(t=37), 16, 0, id="T37-one-segment"),
    pytest.param(dict(t=70, p=3, n_tables=3, d=32, dv=16), 16, 1, id="T70-P3L3-segments-of-one-chunk"),
    pytest.param(dict(b=2, h=1, t=50, p=4, n_tables=1), 16, 2, id="T50-P4L1-two-chunk-segments"),
    pytest.param(dict(t=5, p=1, n_tables=5), 16, 0, id="T5-shorter-than-a-chunk"),
]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape,chunk,seg_chunks", CASES)
def test_forward_and_gradients_match_reference(shape, chunk, seg_chunks, causal):
    check_forward_and_gradients(shape, chunk, seg_chunks, causal)


@pytest.mark.parametrize("causal", [True, False])
def test_value_blocks_split_across_programs(causal, monkeypatch):
    # forward and backward scans each split DV = 32 into two blocks of 16 programs
    from kernels.race import chunk_bwd, chunk_fwd
    monkeypatch.setattr(chunk_fwd, "BLOCK_V", 16)
    monkeypatch.setattr(chunk_bwd, "BWD_BLOCK_V", 16)
    check_forward_and_gradients(dict(t=45, p=3, n_tables=2, dv=32), 16, 1, causal)


def test_seed_entry_is_causal_race():
    q, k, v, w = inputs(t=21)
    torch.testing.assert_close(entry(q, k, v, w), ref.race_causal_chunked(q, k, v, w), rtol=1e-5, atol=1e-5)


def test_opcheck_and_torch_compile():
    q, k, v, w = inputs(t=20)
    leaves = [x.requires_grad_(True) for x in (q, k, v)]
    torch.library.opcheck(race_fwd_op, (*leaves, w, 0.25, 16, 1, True))
    compiled = torch.compile(race_attention, backend="aot_eager", fullgraph=True)
    out = compiled(*leaves, w, chunk=16)
    grads = torch.autograd.grad(out.sum(), leaves)
    eager = race_attention(*leaves, w, chunk=16)
    torch.testing.assert_close(out, eager)
    for got, want in zip(grads, torch.autograd.grad(eager.sum(), leaves)):
        torch.testing.assert_close(got, want)


def test_bad_shapes_are_rejected():
    q, k, v, w = inputs(d=24)
    with pytest.raises(ValueError, match="powers of two"):
        race_attention(q, k, v, w)
    q, k, v, w = inputs()
    with pytest.raises(ValueError, match="expected w"):
        race_attention(q, k, v, w[..., :8])


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape,chunk,seg_chunks", [
    pytest.param(dict(t=70, p=3, n_tables=3, d=32, dv=16), 16, 1, id="T70-P3L3-S32"),
    pytest.param(dict(t=45, p=4, n_tables=3, dv=32), 16, 2, id="T45-P4L3-S64"),  # S >= 64: the _WIDE settings
])
def test_hash_in_the_scans_or_before_them(shape, chunk, seg_chunks, causal, fused, monkeypatch):
    # the scans hash q and k themselves (FUSED_HASH) or read phi from `_race_hash`, at S < 64 and S >= 64
    from kernels.race import chunk_fwd
    monkeypatch.setattr(chunk_fwd, "FUSED_HASH", fused)
    monkeypatch.setattr(chunk_fwd, "FUSED_HASH_WIDE", fused)
    (q, k, v, w), golden = check_forward_and_gradients(shape, chunk, seg_chunks, causal)
    with torch.no_grad():  # the direct path: no custom op, phi(q) and den not written
        assert rel(race_attention(q, k, v, w, causal=causal, chunk=chunk, seg_chunks=seg_chunks), golden) < 1e-5


def test_forward_without_autograd_skips_the_saved_tensors():
    from kernels.race.chunk_fwd import race_fwd
    q, k, v, w = inputs(t=50, p=3, n_tables=3)
    o, den, state, phq, phk = race_fwd(q, k, v, w, chunk=16, seg_chunks=1, save=False)
    assert den is None and state is None and phq is None and phk is None
    saved = race_fwd(q, k, v, w, chunk=16, seg_chunks=1)
    torch.testing.assert_close(o, saved[0], rtol=0, atol=0)
    assert saved[2].shape == (2, 4, 17, 32)  # (B*H, segments, DV + 1, S): the inclusive prefix over segments


@pytest.mark.parametrize("low", [True, False])
def test_fp16_gradients_with_dphi_in_the_input_dtype(low, monkeypatch):
    # DPHI_LOW: dL/dphi passes from the scans to the hash backward in the input dtype (fp16 here)
    from kernels.race import chunk_bwd
    monkeypatch.setattr(chunk_bwd, "DPHI_LOW", low)
    q, k, v, w = inputs(t=70, p=3, n_tables=2, d=32, dv=32)
    leaves64 = [x.half().double().requires_grad_(True) for x in (q, k, v)]
    golden = ref.race_attention(*leaves64, w.double())
    do = torch.randn_like(golden).half()
    golden_grads = torch.autograd.grad(golden, leaves64, do.double())
    leaves = [x.half().requires_grad_(True) for x in (q, k, v)]
    out = race_attention(*leaves, w, chunk=16, seg_chunks=2)
    assert rel(out, golden) < 1e-3  # measured 2.5e-4 (fp16 inputs and output)
    for name, got, want in zip("qkv", torch.autograd.grad(out, leaves, do), golden_grads):
        assert rel(got, want) < 1e-2, name  # measured 1.2e-3 - 1.6e-3, either way


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("p,n_tables", [(3, 2), (4, 4)])  # S = 32 and S = 64 (the _WIDE settings)
def test_fp16_forward_with_the_state_in_one_or_two_parts(split, p, n_tables, monkeypatch):
    # SPLIT_STATE: the output scan's phi(q) . state product takes the fp32 state as two fp16 parts or one
    from kernels.race import chunk_fwd
    monkeypatch.setattr(chunk_fwd, "SPLIT_STATE", split)
    monkeypatch.setattr(chunk_fwd, "SPLIT_STATE_WIDE", split)
    q, k, v, w = inputs(t=150, p=p, n_tables=n_tables, d=32, dv=32)
    golden = ref.race_attention(*(x.half().double() for x in (q, k, v)), w.double())
    with torch.no_grad():
        out = race_attention(q.half(), k.half(), v.half(), w, chunk=16, seg_chunks=2)
    assert rel(out, golden) < 1e-3  # measured 2.5e-4 (S = 32) and 3.0e-4 (S = 64), either way


@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (3, 70, 33), (1, 1, 8)])
def test_segment_prefix(shape):
    # the prefixes over segments (dim 1): inclusive forward (the forward's state), exclusive reverse (the
    # backward's), over more segments than one step of the kernel holds (70 > 32) and partial column blocks
    from kernels.race.chunk_fwd import segment_prefix
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=F64).float()
    torch.testing.assert_close(segment_prefix(x.clone()), x.double().cumsum(1).float(), rtol=1e-5, atol=1e-5)
    suffix = x.double().sum(1, keepdim=True) - x.double().cumsum(1)
    torch.testing.assert_close(segment_prefix(x.clone(), reverse=True), suffix.float(), rtol=1e-5, atol=1e-5)
