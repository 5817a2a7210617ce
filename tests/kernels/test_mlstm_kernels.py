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


def seeded_like(x):
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)


# fp32 gradients against float64: over 30 draws of dh, test_small_blocks' df reached 2.9e-5 (the forward's rounding
# in rows where |s| is small, which these inputs have: h 2.3e-6 off, against 0.9e-6 on average over 12 input seeds)
GRAD_TOL = 5e-5


def assert_matches_reference(xs, check_state=False, **kw):
    """mlstm_chunkwise(*xs, **kw): h and the gradients of q, k, v, i, f against float64 autograd of the parallel
    form; with check_state, the final state against the recurrent form's."""
    leaves64 = [x.double().requires_grad_(True) for x in xs]
    golden = ref.mlstm_parallel(*leaves64)
    dh = seeded_like(golden)
    golden_grads = torch.autograd.grad(golden, leaves64, dh)
    leaves = [x.clone().requires_grad_(True) for x in xs]
    if check_state:
        h, state = mlstm_chunkwise(*leaves, return_state=True, **kw)
        _, golden_state = ref.mlstm_recurrent(*(x.double() for x in xs))
        for got, want in zip(state, golden_state):
            assert rel(got, want) < 1e-5
    else:
        h = mlstm_chunkwise(*leaves, **kw)
    assert rel(h, golden) < 1e-5
    for name, got, want in zip("qkvif", torch.autograd.grad(h, leaves, dh.float()), golden_grads):
        assert rel(got, want) < GRAD_TOL, name


CASES = [  # chunk = tile: one tile per chunk; chunk > tile: TFLA-style tiles inside the chunk
    pytest.param(dict(t=37), 16, 16, id="T37-chunk16"),
    pytest.param(dict(t=70, dqk=32, dv=16, b=2, h=1), 32, 16, id="T70-chunk32-tile16"),
    pytest.param(dict(t=64, f_shift=-1.0), 64, 32, id="T64-one-chunk-fast-forgetting"),
    pytest.param(dict(t=9), 32, 16, id="T9-shorter-than-a-chunk"),
]


@pytest.mark.parametrize("shape,chunk,tile", CASES)
def test_chunkwise_forward_state_and_gradients_match_reference(shape, chunk, tile):
    assert_matches_reference(inputs(**shape), check_state=True, chunk=chunk, tile=tile)


def test_small_blocks(monkeypatch):
    # below SCAN_MIN_PROGRAMS the scans switch to the small blocks: here 2 x 2 tiles of the state; attends with
    # two output blocks per row (the backward's row dots then taken outside the kernel, dh . h formed by both);
    # the gate stabilizers' scan over the 3 chunks in blocks of 2
    from kernels.mlstm import chunk_bwd, chunk_fwd
    xs = inputs(t=40, dqk=32, dv=32)
    monkeypatch.setattr(chunk_fwd, "GATE_SCAN_BLOCK", 2)
    monkeypatch.setattr(chunk_fwd, "BLOCK_N", 16)
    monkeypatch.setattr(chunk_fwd, "SCAN_MIN_PROGRAMS", 10 ** 9)
    monkeypatch.setattr(chunk_fwd, "SMALL_STATE_BLOCK_K", 16)
    monkeypatch.setattr(chunk_fwd, "SMALL_STATE_BLOCK_N", 16)
    for name in ("DQ_ATTEND", "DK_ATTEND", "DV_ATTEND"):
        monkeypatch.setattr(chunk_bwd, name, dict(getattr(chunk_bwd, name), bn=16))
    monkeypatch.setattr(chunk_bwd, "REV_SCAN_PAIRED", dict(chunk_bwd.REV_SCAN_PAIRED, min_programs=10 ** 9,
                                                            small_bk=16, small_bn=16, small_warps=4))
    assert_matches_reference(xs, chunk=16, tile=16)


def test_scans_with_weights_applied_first(monkeypatch):
    # `weight_chunks` before the scans, both directions, main and small blocks (the defaults use it in the reverse
    # scan's small blocks only)
    from kernels.mlstm import chunk_bwd, chunk_fwd
    monkeypatch.setattr(chunk_fwd, "STATE_WEIGHT_FIRST", True)
    monkeypatch.setattr(chunk_fwd, "SMALL_STATE_WEIGHT_FIRST", True)
    monkeypatch.setattr(chunk_bwd, "REV_SCAN_PAIRED", dict(chunk_bwd.REV_SCAN_PAIRED, weight_first=True))
    for min_programs in (0, 10 ** 9):
        monkeypatch.setattr(chunk_fwd, "SCAN_MIN_PROGRAMS", min_programs)
        monkeypatch.setattr(chunk_bwd, "REV_SCAN_PAIRED", dict(chunk_bwd.REV_SCAN_PAIRED, min_programs=min_programs))
        assert_matches_reference(inputs(t=70), check_state=True, chunk=32, tile=16)


def test_forget_gate_gradient_does_not_cancel_over_the_sequence():
    # df_t sums q . dq - k . dk over the rest of the sequence, two large terms that nearly cancel; summed over the
    # whole sequence (before the boundary products) the forget gates' per-head gradient, fp16, was 4.3e-3 off here
    # (1.6e-3 - 9.4e-3 over five seeds) where it is now 5.7e-4 (4.6e-4 - 1.2e-3)
    xs = inputs(h=2, t=2048, dqk=64, dv=64, seed=0, f_shift=3.0)
    xs = [x.half() for x in xs[:3]] + list(xs[3:])
    leaves64 = [x.double().requires_grad_(True) for x in xs]
    golden = ref.mlstm_parallel(*leaves64)
    dh = seeded_like(golden)
    golden_df = torch.autograd.grad(golden, leaves64[4], dh)[0]
    leaves = [x.clone().requires_grad_(True) for x in xs]
    df = torch.autograd.grad(mlstm_chunkwise(*leaves, chunk=64), leaves[4], dh.half())[0]
    assert rel(df, golden_df) < 1e-3
    assert rel(df.sum(-1), golden_df.sum(-1)) < 1.5e-3


def test_n_states_in_two_parts():
    # the forward attend's q . n is a tensor-core product with n as two parts in the inputs' dtype, hi + lo: in
    # fp16 hi alone is off by up to half an ulp (2^-11 relative), the two parts together by about 2^-22
    from kernels.mlstm import chunk_fwd
    q, k, v, i, f = inputs(h=2, t=70, dqk=32, dv=16)
    k, v = (x.half().reshape(2, 70, -1) for x in (k, v))
    gates = chunk_fwd.gate_terms(i.reshape(2, 70), f.reshape(2, 70), 16)
    _, n_states, _ = chunk_fwd.state_scan(k, v, gates["weight"], gates["decay"], chunk=16)
    parts = chunk_fwd.n_state_parts(n_states, 5, torch.half)
    n = n_states[:, :5]
    hi, lo = parts[..., 0].float(), parts[..., 1].float()
    assert torch.equal(parts[..., 0], n.half())
    assert (hi - n).abs().amax() > 1e-4 * n.abs().amax()  # hi alone would not do
    torch.testing.assert_close(hi + lo, n, rtol=1e-6, atol=1e-7)
    assert not parts[..., 2:].any()


def test_forget_gradient_from_later_chunk_sums(monkeypatch):
    # FORGET_GRAD_FROM_STATES = False: the part of df from the later chunks as the sum of q . dq - k . dk over them
    from kernels.mlstm import chunk_bwd
    monkeypatch.setattr(chunk_bwd, "FORGET_GRAD_FROM_STATES", False)
    assert_matches_reference(inputs(t=70, dqk=32, dv=16, b=2, h=1), chunk=16)


@pytest.mark.parametrize("shift", [4.0, -1.0], ids=["slow-forgetting", "fast-forgetting"])
def test_chunk_stabilizers_over_blocks_of_chunks(monkeypatch, shift):
    # m_c = max(g_c + m_{c-1}, a_c) from m = 0 and the carried state's log decay g_c + m_{c-1} - m_c, in float64
    # chunk by chunk, against `_gate_chunk_scan` taking 13 chunks in blocks of 4 (the carry, a partial block)
    from kernels.mlstm import chunk_fwd
    monkeypatch.setattr(chunk_fwd, "GATE_SCAN_BLOCK", 4)
    chunk = 16
    _, _, _, i, f = inputs(b=2, t=200, f_shift=shift)
    i[..., :8] += 8.0  # strong early inputs: with slow forgetting the later chunks' m comes from the first
    i, f = i.reshape(4, 200), f.reshape(4, 200)
    gates = chunk_fwd.gate_terms(i, f, chunk)
    pad = 13 * chunk - 200
    log_f = torch.nn.functional.pad(torch.nn.functional.logsigmoid(f.double()), (0, pad)).view(4, 13, chunk)
    ig = torch.nn.functional.pad(i.double(), (0, pad), value=-1e30).view(4, 13, chunk)
    b = log_f.cumsum(-1)
    g = b[..., -1]
    a = (g[..., None] - b + ig).amax(-1)
    m_prev = torch.zeros(4, dtype=F64)
    for c in range(13):
        m = torch.maximum(g[:, c] + m_prev, a[:, c])
        torch.testing.assert_close(gates["m_chunk"][:, c].double(), m, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gates["decay"][:, c].double(), g[:, c] + m_prev - m, rtol=1e-5, atol=1e-5)
        m_prev = m


@pytest.mark.parametrize("prefetch", [False, True], ids=["in-place-loads", "prefetched-loads"])
def test_each_attend_takes_its_own_settings(monkeypatch, prefetch):
    # no tile given: the forward and the backward's dq, dk, dv attends each use their own tile and blocks;
    # column steps smaller than the row tile (col_tile) in the forward and in dq, dk; loads issued a step early
    from kernels.mlstm import chunk_bwd, chunk_fwd
    xs = inputs(t=75, dqk=32, dv=32)
    monkeypatch.setattr(chunk_fwd, "TILE", 32)
    monkeypatch.setattr(chunk_fwd, "COL_TILE", 16)
    monkeypatch.setattr(chunk_fwd, "BLOCK_K", 16)
    monkeypatch.setattr(chunk_fwd, "PREFETCH", prefetch)
    monkeypatch.setattr(chunk_fwd, "STATE_PREFETCH", prefetch)
    monkeypatch.setattr(chunk_fwd, "STATE_BLOCK_K", 16)
    monkeypatch.setattr(chunk_fwd, "SCAN_MIN_PROGRAMS", 0)
    monkeypatch.setattr(chunk_bwd, "DQ_ATTEND", dict(chunk_bwd.DQ_ATTEND, tile=32, col_tile=16, bk=16,
                                                     prefetch=prefetch))
    monkeypatch.setattr(chunk_bwd, "DK_ATTEND", dict(chunk_bwd.DK_ATTEND, tile=32, col_tile=16, bk=16, bn=16,
                                                     prefetch=prefetch))
    monkeypatch.setattr(chunk_bwd, "DV_ATTEND", dict(chunk_bwd.DV_ATTEND, tile=16, bk=16, prefetch=prefetch))
    monkeypatch.setattr(chunk_bwd, "REV_SCAN_PAIRED", dict(chunk_bwd.REV_SCAN_PAIRED, bk=16, bn=32, min_programs=0,
                                                           prefetch=prefetch))
    assert_matches_reference(xs, chunk=32)


def test_step_matches_reference_and_continues_a_prefill():
    q, k, v, i, f = inputs(t=12)
    h_pre, state = mlstm_chunkwise(q[..., :11, :], k[..., :11, :], v[..., :11, :], i[..., :11], f[..., :11],
                                   chunk=16, return_state=True)
    h, c, n, m = mlstm_step(q[..., 11, :], k[..., 11, :], v[..., 11, :], i[..., 11], f[..., 11], *state)
    golden, (gc, gn, gm) = ref.mlstm_recurrent(*(x.double() for x in (q, k, v, i, f)))
    assert rel(h, golden[..., 11, :]) < 1e-5
    for got, want in zip((c, n, m), (gc, gn, gm)):  # the same stabilizer m, so C and n scale alike
        assert rel(got, want) < 1e-5


def test_forward_without_autograd_weights_first(monkeypatch):
    # no backward to follow: straight to the kernels, past the op, with the scan's weights applied first
    # (`weight_chunks`, chunk_fwd.inference_scan_config); with autograd through the op, without; under torch.compile
    # through the op, with
    from kernels.mlstm import chunk_fwd, ops
    calls = []

    def spy(module, name):
        fn = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, **kw: calls.append(name) or fn(*a, **kw))

    spy(ops, "mlstm_chunkwise_fwd_op")
    spy(ops, "mlstm_chunkwise_fwd")
    spy(chunk_fwd, "weight_chunks")
    xs = inputs(t=70)
    golden = ref.mlstm_parallel(*(x.double() for x in xs))
    _, golden_state = ref.mlstm_recurrent(*(x.double() for x in xs))
    # main blocks at any chunk, small ones up to INFERENCE_SMALL_WEIGHT_MAX_CHUNK
    for min_programs, small_max_chunk, weighted in ((0, 16, True), (10 ** 9, 32, True), (10 ** 9, 16, False)):
        monkeypatch.setattr(chunk_fwd, "SCAN_MIN_PROGRAMS", min_programs)
        monkeypatch.setattr(chunk_fwd, "INFERENCE_SMALL_WEIGHT_MAX_CHUNK", small_max_chunk)
        calls.clear()
        h, state = mlstm_chunkwise(*xs, chunk=32, tile=16, return_state=True)
        assert rel(h, golden) < 1e-5
        for got, want in zip(state, golden_state):
            assert rel(got, want) < 1e-5
        assert calls == ["mlstm_chunkwise_fwd"] + ["weight_chunks"] * weighted
    calls.clear()
    leaves = [x.clone().requires_grad_(True) for x in xs]
    assert rel(mlstm_chunkwise(*leaves, chunk=32, tile=16).detach(), golden) < 1e-5
    assert calls == ["mlstm_chunkwise_fwd_op", "mlstm_chunkwise_fwd"]
    monkeypatch.undo()  # under torch.compile without autograd: through the op, with the inference settings
    spy(chunk_fwd, "weight_chunks")
    calls.clear()
    compiled = torch.compile(mlstm_chunkwise, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert rel(compiled(*xs, chunk=32, tile=16), golden) < 1e-5
    assert calls == ["weight_chunks"]


def test_opcheck_and_torch_compile():
    xs = inputs(t=20, dv=16)
    leaves = [x.requires_grad_(True) for x in xs]
    for inference in (False, True):
        torch.library.opcheck(mlstm_chunkwise_fwd_op, (*leaves, 16, 16, inference))
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


_OFFLINE = """
import json, re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels.mlstm import chunk_fwd
spec = json.loads(sys.argv[1])
fn = getattr(chunk_fwd, spec["kernel"])
sig, consts, attrs = {}, {}, {}
for idx, name in enumerate(fn.arg_names):
    if name in spec["constexprs"]:
        sig[name], consts[(idx,)] = "constexpr", spec["constexprs"][name]
    elif name.endswith("_ptr"):
        sig[name], attrs[(idx,)] = ("*bf16" if name in spec["bf16"] else "*fp32"), [["tt.divisibility", 16]]
    elif name in ("scale", "eps"):
        sig[name] = "fp32"
    else:
        sig[name], attrs[(idx,)] = "i32", [["tt.divisibility", 16]]
compiled = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32), options=spec["options"])
rings = re.findall(r"ttg\\.local_alloc : \\(\\) -> !ttg\\.memdesc<(\\d+)x", compiled.asm["ttgir"])
print(json.dumps(dict(rings=[int(n) for n in rings], shared=compiled.metadata.shared)))
"""


def compile_for_sm90(kernel, constexprs, bf16, **options):
    """Compile a kernels.mlstm.chunk_fwd kernel for sm_90a offline (no GPU needed; in a process of its own, without
    the interpreter), with the JIT's divisibility hints: {"rings": the stage counts of its shared-memory buffers,
    "shared": its shared memory in bytes}. Skips the test where Triton cannot compile for sm_90a here."""
    import json
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    spec = json.dumps(dict(kernel=kernel, constexprs=constexprs, bf16=bf16, options=options))
    proc = subprocess.run([sys.executable, "-c", _OFFLINE, spec], capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode:
        pytest.skip(f"offline sm_90a compile unavailable: {proc.stderr.strip()[-300:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind,stages", [("h", 2), ("dq", 3)])
def test_attend_pipeline_buffers_match_the_stages(kind, stages):
    # Every shared-memory ring the pipeliner allocates must hold `stages` tiles: the forward's and dq's x tile feeds
    # wgmmas (the state product and the row dots); when it also fed the row dots in registers it got stages - 1
    # buffers, and the next step's copy overwrote it under the running wgmma (h changed from run to run on the
    # H200; linear.md).
    kd, nd = (256, 512) if kind == "h" else (512, 256)
    constexprs = dict(KD=kd, ND=nd, CHUNK=128, BR=64, BC=64, BK=64, BN=nd, REVERSE=False, FWD=False,
                      ROW_EXTRA=False, COL_EXTRA=False, ROW_DOT=False, ROW_DS=False, PREFETCH=False)
    constexprs.update(dict(FWD=True) if kind == "h" else dict(ROW_EXTRA=True, ROW_DOT=True, ROW_DS=True))
    constexprs["st_k" if kind == "dq" else "st_n"] = 1
    bf16 = ["x_ptr", "y_ptr", "z_ptr", "state_ptr", "out_ptr", "dot_w_ptr", "h_ptr"]
    bf16 += ["vec_ptr"] if kind == "h" else []  # the forward's n state parts
    rings = compile_for_sm90("_chunk_attend", constexprs, bf16, num_warps=16, num_stages=stages)["rings"]
    assert rings and all(n == stages for n in rings), rings


@pytest.mark.parametrize("chunk", [256, 512])
@pytest.mark.parametrize("scan", ["forward", "forward, small blocks", "reverse", "reverse, paired",
                                  "reverse, paired, small blocks"])
def test_state_scans_fit_in_shared_memory(chunk, scan):
    # A scan step loads a whole chunk of A and B; at chunk 512 two pipeline stages of 64 x 128 blocks need 329,728
    # bytes, more than a Hopper program has (OutOfResources on the H200 at 7B head sizes): `scan_stages` takes fewer.
    from kernels.mlstm import chunk_bwd, chunk_fwd
    reverse, paired = scan.startswith("reverse"), "paired" in scan
    cfg = (chunk_bwd.REV_SCAN_PAIRED if paired else chunk_bwd.REV_SCAN) if reverse else chunk_fwd.fwd_scan_config()
    bk, bn, warps, weighted = chunk_fwd.scan_blocks(cfg, scan.endswith("small blocks"))
    constexprs = dict(KD=256, ND=512, CHUNK=chunk, BK=bk, BN=bn, REVERSE=reverse, HAS_COEF=reverse and not weighted,
                      PREFETCH=bool(cfg.get("prefetch")), PAIR=paired, WEIGHTED=weighted)
    stages = chunk_fwd.scan_stages(chunk, bk, bn, 2, cfg["stages"], weighted)
    bf16 = ["a_ptr", "b_ptr", "states_ptr", "pair_ptr"]
    shared = compile_for_sm90("_chunk_state_scan", constexprs, bf16, num_warps=warps, num_stages=stages)["shared"]
    assert shared <= chunk_fwd.SHARED_MEMORY, (stages, shared)
