"""GPU benchmark of the linear-time family (RACE attention, mLSTM) against its peers; the
results table is docs/benchmarks/linear.md.

    python3 -m kernels.linear_benchmark --out DIR [--groups g1,g2,...]

Every group runs in its own subprocess (mlstm_kernels' triton_xl_chunk aborts its process at
compile time on Triton 3.6) and appends JSON lines to DIR/results.jsonl; the driver prints a
table at the end. Times are medians of triton.testing.do_bench (CUDA events, L2 flushed
between runs); "fwd+bwd" is the forward plus torch.autograd.grad of all differentiable inputs.
Bounds: 4.3 TB/s copy bandwidth and 790 TFLOP/s dense bf16, both measured on this H200.
"""
import argparse
import json
import os
import subprocess
import sys
import time

BANDWIDTH = 4.3e12
MATMUL = 790e12
MLSTM_T = (1024, 8192, 65536)  # B x T = 65,536, 8 heads, d_qk 256, d_v 512 (xLSTM 7B)
MLSTM_CHUNKS = (128, 256, 512)
RACE_T = tuple(1 << e for e in (12, 14, 16, 18, 20, 22, 23, 24))  # 4K .. 16M
RACE_PL = ((3, 3), (4, 4))
RACE_SWEEP_T = (1 << 18, 1 << 20, 1 << 22)  # race_sweep: forward at these T, forward+backward at the last
RACE_PARTS_T = (1 << 22, 1 << 18)
# most important first: the driver stops starting groups when its budget runs out
GROUPS = ("check", "layers", "mlstm_ours", "race_ours", "mlstm_limit", "race_sdpa", "mlstm_xl", "mlstm_fla", "race_fla",
          "step", "race_ref", "mlstm_parts", "race_parts")


def bench(fn, rep=60):
    from triton.testing import do_bench
    return do_bench(fn, warmup=20, rep=rep, return_mode="median")


def emit(out, **row):
    with open(os.path.join(out, "results.jsonl"), "a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def output_and_grads(fn, xs, leaves, dout):
    """[fn(*xs), its gradients for `leaves` given dout]."""
    import torch
    out = fn(*xs)
    return [out.detach()] + list(torch.autograd.grad(out, leaves, dout))


def largest_run_difference(fn, xs, leaves, dout, runs=3):
    """fn(*xs) and its gradients for `leaves` (dout) `runs` times on identical inputs: the largest relative
    difference from the first run (any difference: not deterministic)."""
    results = [output_and_grads(fn, xs, leaves, dout) for _ in range(runs)]
    return max(rel(a, b) for other in results[1:] for a, b in zip(other, results[0]))


# ---------------- mLSTM ----------------

def mlstm_inputs(t, layout="bhtd", grad=False, b=None):
    import torch
    b, h = b or 65536 // t, 8
    g = torch.Generator(device="cuda").manual_seed(t)
    shape = (b, h, t) if layout == "bhtd" else (b, t, h)
    mk = lambda *s: torch.randn(*s, generator=g, device="cuda", dtype=torch.float32)  # noqa: E731
    q, k = mk(*shape, 256).bfloat16(), mk(*shape, 256).bfloat16()
    v = mk(*shape, 512).bfloat16()
    i, f = mk(*shape), mk(*shape) + 3.0
    xs = [q, k, v, i, f]
    if grad:
        for x in xs:
            x.requires_grad_(True)
    return xs


def mlstm_flops(t, mode):
    b, h = 65536 // t, 8
    per = 4.0 * 256 * 512 + 64.0 * (256 + 512)  # task mlstm_chunkwise_fwd's count
    return per * b * h * t * (3.0 if mode == "fwd+bwd" else 1.0)


def mlstm_bytes(t, mode):
    b, h = 65536 // t, 8
    fwd = (2 * 256 + 2 * 512) * 2 + 2 * 4  # q, k, v, h bf16; i, f fp32
    bwd = fwd + 512 * 2 + (2 * 256 + 512) * 2 + 2 * 4  # + dh read, dq dk dv di df written
    return b * h * t * (bwd if mode == "fwd+bwd" else fwd)


def mlstm_bound_ms(t, mode):
    return 1e3 * max(mlstm_flops(t, mode) / MATMUL, mlstm_bytes(t, mode) / BANDWIDTH)


def time_fwd_bwd(fn, xs):
    import torch
    out = fn(*xs)
    out = out[0] if isinstance(out, tuple) else out
    dout = torch.randn_like(out)

    def step():
        o = fn(*xs)
        o = o[0] if isinstance(o, tuple) else o
        torch.autograd.grad(o, xs, dout, allow_unused=True)  # fla's simple_gla has no input gate

    return bench(step)


def mlstm_rows(out, name, fn, layout="bhtd", chunks=(None,)):
    import torch
    for t in MLSTM_T:
        for chunk in chunks:
            label = name if chunk is None else f"{name} (chunk {chunk})"
            xs = None
            try:
                xs = mlstm_inputs(t, layout)
                f = (lambda *a: fn(*a)) if chunk is None else (lambda *a, c=chunk: fn(*a, chunk=c))
                ms = bench(lambda: f(*xs))
                emit(out, table="mlstm", impl=label, T=t, mode="fwd", ms=ms, bound_ms=mlstm_bound_ms(t, "fwd"))
                xs = mlstm_inputs(t, layout, grad=True)
                ms = time_fwd_bwd(f, xs)
                emit(out, table="mlstm", impl=label, T=t, mode="fwd+bwd", ms=ms, bound_ms=mlstm_bound_ms(t, "fwd+bwd"))
            except Exception as e:  # noqa: BLE001 - a failing peer is a result to report
                emit(out, table="mlstm", impl=label, T=t, mode="error", error=f"{type(e).__name__}: {e}"[:300])
            xs = None
            torch.cuda.empty_cache()


def group_mlstm_ours(out):
    from kernels.mlstm import mlstm_chunkwise
    mlstm_rows(out, "evo mlstm_chunkwise", mlstm_chunkwise, chunks=(None,) + MLSTM_CHUNKS)  # None: the default


def group_mlstm_limit(out):
    from mlstm_kernels.torch import get_mlstm_kernel
    kernel = get_mlstm_kernel("chunkwise--triton_limit_chunk")
    mlstm_rows(out, "mlstm_kernels triton_limit_chunk (chunk 64)", lambda *a: kernel(*a, chunk_size=64))


def group_mlstm_xl(out):
    from mlstm_kernels.torch import get_mlstm_kernel
    kernel = get_mlstm_kernel("chunkwise--triton_xl_chunk")
    mlstm_rows(out, "mlstm_kernels triton_xl_chunk (TFLA, chunk 128)", lambda *a: kernel(*a, chunk_size=128))


def group_mlstm_fla(out):
    # fla has no mLSTM; chunk_simple_gla is the same scalar-gated linear attention without the
    # input gate, stabilizer and normalizer: a lower bound on what a fla-style mLSTM would cost.
    # fla refuses its backward on Triton >= 3.4 and < 3.7.1 on Hopper (its issue #640: wrong gradients), so the
    # rows name the Triton they ran under, and a check against the naive form comes first.
    import torch
    import torch.nn.functional as F
    import triton
    from fla.ops.simple_gla import chunk_simple_gla

    def run(q, k, v, i, f):
        return chunk_simple_gla(q, k, v, g=F.logsigmoid(f), scale=256 ** -0.5)[0]

    def naive(q, k, v, i, f):  # o_t = scale sum_{s <= t} exp(G_t - G_s) (q_t . k_s) v_s, G the cumulative log forget
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        g = F.logsigmoid(f).transpose(1, 2).cumsum(-1)
        t = q.shape[2]
        causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        decay = torch.exp((g[..., :, None] - g[..., None, :]).masked_fill(~causal, -float("inf")))
        return ((q @ k.transpose(-1, -2)) * decay * 256 ** -0.5 @ v).transpose(1, 2)

    name = f"fla chunk_simple_gla (no input gate/normalizer; triton {triton.__version__})"
    try:
        xs = [x[:1, :2048].detach().clone().requires_grad_(True) for x in mlstm_inputs(2048, "bthd")]
        dout = torch.randn_like(xs[2])
        got = output_and_grads(run, xs, xs[:3] + xs[4:], dout)
        ref = [x.detach().double().requires_grad_(True) for x in xs]
        want = output_and_grads(naive, ref, ref[:3] + ref[4:], dout.double())
        for what, a, b in zip(("o", "dq", "dk", "dv", "df"), got, want):
            emit(out, table="check", what=f"{name}: {what} bf16 B=1 T=2048 vs float64 naive", rel_err=rel(a, b))
    except Exception as e:  # noqa: BLE001 - a failing peer is a result to report
        emit(out, table="check", what=f"{name}: check error", rel_err=float("nan"),
             error=f"{type(e).__name__}: {e}"[:300])
    xs = ref = got = want = None
    torch.cuda.empty_cache()
    mlstm_rows(out, name, run, layout="bthd")


def group_step(out):
    import torch
    import baselines
    from baselines import mlstm as ref
    from kernels.mlstm import mlstm_step
    task = baselines.get_task("mlstm_step")
    for shape in task.shapes:
        xs = task.make_inputs(shape, torch.bfloat16, 0, "cuda")
        err = max(rel(a, b) for a, b in zip(mlstm_step(*xs), ref.mlstm_step(*xs)))
        ms = bench(lambda: mlstm_step(*xs))
        eager = bench(lambda: ref.mlstm_step(*xs))
        bound = 1e3 * task.bytes(shape, torch.bfloat16) / BANDWIDTH
        emit(out, table="step", B=shape["B"], ms=ms, eager_ms=eager, bound_ms=bound, rel_err=err)


# ---------------- RACE ----------------

def race_inputs(t, p, n_tables, grad=False):
    import torch
    g = torch.Generator(device="cuda").manual_seed(t + p)
    q, k, v = (torch.randn(1, 4, t, 128, generator=g, device="cuda").bfloat16() for _ in range(3))
    w = torch.randn(n_tables, p, 128, generator=g, device="cuda")
    if grad:
        for x in (q, k, v):
            x.requires_grad_(True)
    return q, k, v, w


def race_bound_ms(t, mode):
    tensors = 12 if mode == "fwd+bwd" else 4  # q k v o; + q k v o do read, dq dk dv written
    return 1e3 * tensors * t * 4 * 128 * 2 / BANDWIDTH


def race_rows(out, name, fn, max_t_fwd, max_t_bwd, differentiable=(0, 1, 2), pls=RACE_PL):
    import torch
    for p, n_tables in pls:
        for t in RACE_T:
            for mode, limit in (("fwd", max_t_fwd), ("fwd+bwd", max_t_bwd)):
                if t > limit:
                    continue
                try:
                    xs = race_inputs(t, p, n_tables, grad=mode == "fwd+bwd")
                    if mode == "fwd":
                        with torch.no_grad():
                            ms = bench(lambda: fn(*xs))
                    else:
                        o = fn(*xs)
                        dout = torch.randn_like(o)
                        del o
                        leaves = [xs[i] for i in differentiable]
                        ms = bench(lambda: torch.autograd.grad(fn(*xs), leaves, dout))
                    emit(out, table="race", impl=name, P=p, L=n_tables, T=t, mode=mode, ms=ms,
                         bound_ms=race_bound_ms(t, mode))
                except torch.OutOfMemoryError:
                    emit(out, table="race", impl=name, P=p, L=n_tables, T=t, mode=mode, error="out of memory")
                except Exception as e:  # noqa: BLE001
                    emit(out, table="race", impl=name, P=p, L=n_tables, T=t, mode=mode,
                         error=f"{type(e).__name__}: {e}"[:300])
                xs = o = dout = leaves = None
                torch.cuda.empty_cache()


def group_race_ours(out):
    from kernels.race import race_causal
    race_rows(out, "evo race_causal", race_causal, 1 << 24, 1 << 24)


def group_race_ref(out):
    from baselines.race import race_causal_chunked
    race_rows(out, "PyTorch reference (chunked, fp32 math)", race_causal_chunked, 1 << 16, 1 << 14)


def sdpa_causal(q, k, v, w):
    """The softmax-attention peer on RACE's inputs (the hyperplanes w unused)."""
    import torch.nn.functional as F
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def group_race_sdpa(out):
    race_rows(out, "SDPA causal (flash), softmax attention", sdpa_causal, 1 << 17, 1 << 16, pls=RACE_PL[:1])


RACE_GRAPH_T = tuple(1 << e for e in (10, 11, 12, 13, 14, 16, 18))


def group_race_graphs(out):
    # run by name: below 256K the rows above are host-bound (Python and launches); here each call is replayed from
    # a CUDA graph, ours and SDPA's alike, which leaves GPU time: the crossover with SDPA without the host floor.
    # Then the user's way to it, torch.compile(mode="reduce-overhead") (inductor, CUDA graphs), at one length.
    import torch
    from kernels.race import race_causal
    from kernels.sparse_benchmark import graphed

    impls = [("evo race_causal, CUDA graph", race_causal, RACE_PL, RACE_GRAPH_T),
             ("SDPA causal (flash), CUDA graph", sdpa_causal, RACE_PL[:1], RACE_GRAPH_T[:-1])]  # 256K: 0.4 s a call
    for name, fn, pls, lengths in impls:
        for p, n_tables in pls:
            for t in lengths:
                for mode in ("fwd", "fwd+bwd"):
                    xs = race_inputs(t, p, n_tables, grad=mode == "fwd+bwd")
                    if mode == "fwd":
                        def call():
                            with torch.no_grad():
                                return fn(*xs)
                    else:
                        dout = torch.randn_like(xs[2])

                        def call():
                            return torch.autograd.grad(fn(*xs), xs[:3], dout)
                    emit(out, table="race", impl=name, P=p, L=n_tables, T=t, mode=mode, ms=bench(graphed(call)),
                         bound_ms=race_bound_ms(t, mode))
                    xs = dout = call = None
            torch.cuda.empty_cache()
    t, (p, n_tables) = 1 << 14, RACE_PL[0]
    try:
        compiled = torch.compile(race_causal, mode="reduce-overhead")
        xs = race_inputs(t, p, n_tables, grad=True)
        dout = torch.randn_like(xs[2])
        want = output_and_grads(race_causal, xs, xs[:3], dout)

        def step():
            return output_and_grads(compiled, xs, xs[:3], dout)

        emit(out, table="check", what=f"race torch.compile reduce-overhead T={t} P={p} L={n_tables}, o and grads vs "
             "eager", rel_err=max(rel(a, b) for a, b in zip(step(), want)))
        emit(out, table="race", impl="evo race_causal, torch.compile reduce-overhead", P=p, L=n_tables, T=t,
             mode="fwd+bwd", ms=bench(step), bound_ms=race_bound_ms(t, "fwd+bwd"))
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        emit(out, table="race", impl="evo race_causal, torch.compile reduce-overhead", P=p, L=n_tables, T=t,
             mode="fwd+bwd", error=f"{type(e).__name__}: {e}"[:300])


def group_race_fla(out):
    # fla's chunked linear attention on precomputed features phi(q), phi(k) (S = L 2^P, padded with zero features
    # to a multiple of 64: at 32, (3, 3)'s 24 padded, its backward faults on Triton 3.6 and 3.7.1): the scan alone,
    # without the hashing and without fla's normalizer (whose forward alone was slower than the scan; linear.md).
    import torch
    import torch.nn.functional as F
    import triton
    from fla.ops.linear_attn import chunk_linear_attn
    from baselines.race import soft_hash
    name = f"fla chunk_linear_attn on phi (scan only, no normalizer; triton {triton.__version__})"
    # every forward first: a fault in a backward ends the process
    for mode in ("fwd", "fwd+bwd"):
        for p, n_tables in RACE_PL:
            for t in RACE_T[:-1]:
                try:
                    q, k, v, w = race_inputs(t, p, n_tables)
                    with torch.no_grad():
                        pad = (-(n_tables * 2 ** p)) % 64
                        phq = F.pad(soft_hash(q.transpose(1, 2), w), (0, pad)).bfloat16()
                        phk = F.pad(soft_hash(k.transpose(1, 2), w), (0, pad)).bfloat16()
                    vt = v.transpose(1, 2).contiguous()
                    del q, k, v
                    xs = [phq, phk, vt]

                    def run(*a):
                        return chunk_linear_attn(*a, scale=1.0, normalize=False)[0]

                    if mode == "fwd":
                        ms = bench(lambda: run(*xs))
                    else:
                        for x in xs:
                            x.requires_grad_(True)
                        dout = torch.randn_like(vt)
                        ms = bench(lambda: torch.autograd.grad(run(*xs), xs, dout))
                    emit(out, table="race", impl=name, P=p, L=n_tables, T=t,
                         mode=mode, ms=ms, bound_ms=race_bound_ms(t, mode))
                except torch.OutOfMemoryError:
                    emit(out, table="race", impl=name, P=p, L=n_tables, T=t,
                         mode=mode, error="out of memory")
                except Exception as e:  # noqa: BLE001
                    emit(out, table="race", impl=name, P=p, L=n_tables, T=t,
                         mode=mode, error=f"{type(e).__name__}: {e}"[:300])
                xs = phq = phk = vt = None
                torch.cuda.empty_cache()


# ---------------- where the time goes: each launch of our ops alone ----------------

def profile_kernels(fn, reps=3):
    """GPU time of every kernel of one call of fn, in order, after `reps` warm calls (torch.profiler; no L2
    flush): [(name, ms)], and the span from the first kernel's start to the last one's end, ms."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.time_range.start)
    span = (kernels[-1].time_range.end - kernels[0].time_range.start) / 1e3 if kernels else 0.0
    return [(e.name, e.time_range.elapsed_us() / 1e3) for e in kernels], span


def group_mlstm_parts(out):
    # every launch of one forward+backward, in order, with its GPU time
    import torch
    from kernels.mlstm import mlstm_chunkwise
    for t in (8192, 65536):
        xs = mlstm_inputs(t, grad=True)
        dh = torch.randn(*xs[2].shape, device="cuda", dtype=xs[2].dtype)
        kernels, _ = profile_kernels(lambda: torch.autograd.grad(mlstm_chunkwise(*xs), xs, dh))
        for n, (name, ms) in enumerate(kernels):
            emit(out, table="parts", impl=f"mlstm #{n} {name[:60]}", T=t, ms=ms)
        xs = dh = None
        torch.cuda.empty_cache()


def mlstm_record(t, b=None):
    """One forward+backward of mlstm_chunkwise at T=t (B = 65536 / t unless given), with every attend and state
    scan recorded: {kind: (function, args, kwargs)}, kind in h, dq, dk, dv, scan, rscan."""
    import torch
    from kernels.mlstm import chunk_bwd as cb, chunk_fwd as cf, mlstm_chunkwise
    calls = {}
    attend, scan = cf.attend, cf.state_scan

    def rec_attend(*a, **kw):
        cfg = kw.get("config")
        kind = "h" if cfg is None else {id(cb.DQ_ATTEND): "dq", id(cb.DK_ATTEND): "dk", id(cb.DV_ATTEND): "dv"}[id(cfg)]
        calls[kind] = (attend, a, kw)
        return attend(*a, **kw)

    def rec_scan(*a, **kw):
        calls["rscan" if kw.get("reverse") else "scan"] = (scan, a, kw)
        return scan(*a, **kw)

    xs = mlstm_inputs(t, grad=True)
    if b is not None:
        xs = [x[:b].detach().clone().requires_grad_(True) for x in xs]
    cf.attend, cb.attend, cf.state_scan, cb.state_scan = rec_attend, rec_attend, rec_scan, rec_scan
    try:
        h = mlstm_chunkwise(*xs)
        torch.autograd.grad(h, xs, torch.randn_like(h))
    finally:
        cf.attend, cb.attend, cf.state_scan, cb.state_scan = attend, attend, scan, scan
    return calls


def _mlstm_run_variant(calls, kind, cfg):
    fn, a, kw = calls[kind]
    return fn(*a, **dict(kw, config=cfg))


def _mlstm_settings():
    """The settings now in force: (h, dq, dk, dv, scan, rscan) dicts."""
    from kernels.mlstm import chunk_bwd as cb, chunk_fwd as cf
    return (cf.fwd_attend_config(), dict(cb.DQ_ATTEND), dict(cb.DK_ATTEND), dict(cb.DV_ATTEND), cf.fwd_scan_config(),
            dict(cb.rev_scan_config()))


def _mlstm_apply(h, dq, dk, dv, scan, rscan):
    """Put settings (as from _mlstm_settings) in force: the forward's module tunables, the backward's dicts."""
    from kernels.mlstm import chunk_bwd as cb, chunk_fwd as cf
    cf.TILE, cf.COL_TILE, cf.BLOCK_K, cf.BLOCK_N, cf.NUM_WARPS, cf.NUM_STAGES, cf.ATTEND_MAX_NREG, cf.PREFETCH = (
        h["tile"], h.get("col_tile"), h["bk"], h["bn"], h["warps"], h["stages"], h["maxnreg"], h.get("prefetch", False))
    cf.STATE_PREFETCH = scan.get("prefetch", False)
    cf.STATE_WEIGHT_FIRST = scan.get("weight_first", False)
    cf.SMALL_STATE_WEIGHT_FIRST = scan.get("small_weight_first", cf.STATE_WEIGHT_FIRST)
    for d, new in ((cb.DQ_ATTEND, dq), (cb.DK_ATTEND, dk), (cb.DV_ATTEND, dv), (cb.rev_scan_config(), rscan)):
        d.clear()  # the same dict objects: mlstm_record tells the attends apart by them
        d.update(new)
    (cf.STATE_BLOCK_K, cf.STATE_BLOCK_N, cf.STATE_NUM_WARPS, cf.STATE_NUM_STAGES, cf.SCAN_MIN_PROGRAMS,
     cf.SMALL_STATE_BLOCK_K, cf.SMALL_STATE_BLOCK_N, cf.SMALL_STATE_NUM_WARPS) = (
        scan["bk"], scan["bn"], scan["warps"], scan["stages"], scan["min_programs"], scan.get("small_bk", scan["bk"]),
        scan.get("small_bn", scan["bn"]), scan.get("small_warps", scan["warps"]))


def _mlstm_compile_worker(job):
    # compile (and run once, at a small batch) one (kind, T, B, config), in a process of its own (a candidate that
    # faults leaves its CUDA context unusable): the main process then finds the kernel in Triton's cache; the small
    # batch has the same argument specialization (T, NC divisible by 16). Returns None or the error.
    import torch
    kind, t, b, cfg = job
    try:
        _mlstm_run_variant(mlstm_record(t, 1 if b is None else b), kind, cfg)
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - reported as the candidate's result
        return f"{type(e).__name__}: {e}"[:200]
    return None


# The tuning group (run by name: --groups mlstm_next): every launch of one forward+backward is recorded, then each
# candidate below is re-run alone against the defaults, checked against a setting without software pipelining
# (stages 1) and for run-to-run determinism (three runs): a pipelining race shows up only as outputs that change from
# run to run (linear.md, "The race"). The fastest deterministic, matching candidate of each launch ("winners") is
# timed end to end next to the defaults, and both are checked at full scale (_mlstm_verify). Compiles run first in
# parallel worker processes, one per candidate.
_W16 = dict(warps=16, maxnreg=None)
_REF = dict(tile=64, bk=64, bn=256, stages=1, **_W16)
MLSTM_NEXT_T = (8192, 65536)  # per-launch timings at B=8 and B=1; the winner of a launch is the fastest over both
MLSTM_NEXT_ATTEND = {kind: [_REF, None] for kind in ("h", "dq", "dk", "dv")}  # per kind: the reference, the default
# the scans' candidates take their blocks at every T (min_programs 0); two kernel variants timed this way on
# 2026-11-28 (weights on the A operand, the n state by a small wgmma) were slower or faulted and are gone (linear.md)
_SCAN = dict(bk=64, bn=64, warps=4, stages=2, prefetch=True, min_programs=0)
MLSTM_NEXT_SCAN = [None, _SCAN, dict(_SCAN, bn=128), dict(_SCAN, stages=3), dict(_SCAN, bn=128, stages=3)]
# (the first, the default, is the scans' reference)


def _mlstm_next_outputs(kind, res):
    # what a launch is compared on: an attend's output; a scan's states and n states
    if not isinstance(res, tuple):
        return [res]
    return list(res[:2]) if kind in ("scan", "rscan") else [res[0]]


def _mlstm_next_variants():
    names = dict(zip(("h", "dq", "dk", "dv", "scan", "rscan"), _mlstm_settings()))
    out = []
    for kind, cfgs in MLSTM_NEXT_ATTEND.items():
        out += [(kind, names[kind] if c is None else c) for c in cfgs]
    for kind in ("scan", "rscan"):
        out += [(kind, names[kind] if c is None else c) for c in MLSTM_NEXT_SCAN]
    return out


def _mlstm_verify(out, label):
    # the settings in force: h at full scale (B=8, T=8192), with and without autograd, against the fp32 reference
    # on the same bf16 inputs; forward+backward three times on identical inputs (any difference: not
    # deterministic); gradients at B=1, T=2048 against fp32 autograd of the reference
    import torch
    from baselines import mlstm as mref
    from kernels.mlstm import mlstm_chunkwise
    xs = mlstm_inputs(8192, grad=True)
    h = mlstm_chunkwise(*xs)
    with torch.no_grad():
        ref = mref.mlstm_chunkwise(*(x.detach().float() for x in xs), chunk=128)[0]
    emit(out, table="check", what=f"mlstm {label}: h bf16 B=8 T=8192 vs fp32 ref", rel_err=rel(h, ref))
    with torch.no_grad():  # the inference forward's own settings (chunk_fwd.inference_scan_config)
        emit(out, table="check", what=f"mlstm {label}: h bf16 B=8 T=8192 without autograd vs fp32 ref",
             rel_err=rel(mlstm_chunkwise(*xs), ref))
    ref = None
    dev = h.device
    dh = torch.randn(h.shape, generator=torch.Generator(device=dev).manual_seed(7), device=dev, dtype=h.dtype)
    emit(out, table="check", what=f"mlstm {label}: 3 runs B=8 T=8192, largest difference (h, grads)",
         rel_err=largest_run_difference(mlstm_chunkwise, xs, xs, dh))
    xs = h = dh = None
    torch.cuda.empty_cache()
    for name, err in mlstm_grad_errors(torch.Generator(device=dev).manual_seed(3), 8, 2048):
        what = "h" if name == "h" else f"grad {name}"
        emit(out, table="check", what=f"mlstm {label}: {what} bf16 B=1 T=2048", rel_err=err)


def mlstm_grad_errors(g, heads, t, chunk=None):
    """mlstm_chunkwise on bf16 inputs (B=1, 7B head sizes) against fp32 autograd of the reference on the same
    bf16-rounded inputs (against the unrounded ones it is no test: a few hundred tokens sit near the normalizer's
    |q.n| = exp(-m) switch, and rounding the inputs alone moves the exact dq, dk by ~16%, measured in float64 on
    the CPU): [(name, relative error)] for h, dq, dk, dv, di, df, and df summed over the tokens per head."""
    import torch
    from baselines import mlstm as mref
    from kernels.mlstm import mlstm_chunkwise
    dev = g.device
    lo = [torch.randn(1, heads, t, d, generator=g, device=dev).bfloat16().requires_grad_(True) for d in (256, 256, 512)]
    lo += [torch.randn(1, heads, t, generator=g, device=dev).requires_grad_(True),
           (torch.randn(1, heads, t, generator=g, device=dev) + 3).requires_grad_(True)]
    xs = [x.detach().float().requires_grad_(True) for x in lo]
    ref = mref.mlstm_chunkwise(*xs, chunk=64)[0]
    dh = torch.randn_like(ref).bfloat16()
    mine = mlstm_chunkwise(*lo, chunk=chunk)
    grads = list(zip(torch.autograd.grad(mine, lo, dh), torch.autograd.grad(ref, xs, dh.float())))
    df, ref_df = grads[4]
    return ([("h", rel(mine, ref))] + [(f"d{name}", rel(a, b)) for name, (a, b) in zip("qkvif", grads)]
            + [("df summed over the tokens", rel(df.sum(-1), ref_df.sum(-1)))])


def group_mlstm_verify(out):
    # the defaults (run by name): full-scale h against the fp32 reference, three identical forward+backward runs
    # (any difference: a race), gradients at B=1, T=2048
    _mlstm_verify(out, "defaults")


def group_mlstm_next(out):
    import multiprocessing as mp
    import torch
    from kernels.mlstm import mlstm_chunkwise
    variants = _mlstm_next_variants()
    jobs = [(kind, t, None if t == 8192 else 1, cfg) for t in (8192, 1024) for kind, cfg in variants]
    start = time.time()
    n_workers = min(12, max(1, (os.cpu_count() or 2) - 2))
    with mp.get_context("spawn").Pool(n_workers, maxtasksperchild=1) as pool:
        errors = pool.map(_mlstm_compile_worker, jobs, chunksize=1)
    broken = {n for n, (kind, cfg) in enumerate(variants) for job, err in zip(jobs, errors)
              if err and job[0] == kind and job[3] == cfg}
    for job, err in zip(jobs, errors):
        if err:
            emit(out, table="parts", impl=f"mlstm next {job[0]} {job[3]} T={job[1]}: compile or run error", T=job[1],
                 ms=float("nan"), error=err)
    emit(out, table="parts", impl="mlstm next compile (parallel)", T=0, ms=1e3 * (time.time() - start))
    defaults = _mlstm_settings()
    names = ("h", "dq", "dk", "dv", "scan", "rscan")
    winners = dict(zip(names, defaults))
    total_ms, failed = {}, set(broken)
    for t in MLSTM_NEXT_T:
        calls = mlstm_record(t)
        ref_out = {}
        for n, (kind, cfg) in enumerate(variants):
            if n in broken:
                continue
            label = f"mlstm next {kind} " + " ".join(f"{k}{v}" for k, v in cfg.items() if "small" not in k
                                                     and k != "min_programs")
            try:
                runs = []
                for _ in range(3):
                    runs.append([x.clone() for x in _mlstm_next_outputs(kind, _mlstm_run_variant(calls, kind, cfg))])
                same = all(torch.equal(a, b) for r in runs[1:] for a, b in zip(r, runs[0]))
                if kind not in ref_out:  # the first setting of each kind is the reference
                    ref_out[kind] = runs[0]
                err = max(rel(a, b) if b.norm() > 0 else (a - b).abs().max().item()
                          for a, b in zip(runs[0], ref_out[kind]))
                ms = bench(lambda: _mlstm_run_variant(calls, kind, cfg), rep=25)
                emit(out, table="parts", impl=label, T=t, ms=ms, rel_err=err, deterministic=same)
                total_ms[n] = total_ms.get(n, 0.0) + ms
                if not (same and err < 1e-3):
                    failed.add(n)
            except Exception as e:  # noqa: BLE001
                emit(out, table="parts", impl=label + " error", T=t, ms=float("nan"), error=str(e)[:200])
                failed.add(n)
        calls = runs = None
        torch.cuda.empty_cache()
    best_ms = {}
    for n, (kind, cfg) in enumerate(variants):
        if n not in failed and total_ms[n] < best_ms.get(kind, float("inf")):
            best_ms[kind], winners[kind] = total_ms[n], cfg
    chosen = tuple(winners[n] for n in names)
    emit(out, table="parts", impl="mlstm next winners " + json.dumps(chosen), T=0, ms=0.0)
    for label, settings in (("defaults", defaults), ("next winners", chosen)):
        _mlstm_apply(*settings)
        name = f"evo mlstm_chunkwise ({label})"
        for t in MLSTM_T:
            xs = mlstm_inputs(t)
            emit(out, table="mlstm", impl=name, T=t, mode="fwd", ms=bench(lambda: mlstm_chunkwise(*xs)),
                 bound_ms=mlstm_bound_ms(t, "fwd"))
            xs = mlstm_inputs(t, grad=True)
            emit(out, table="mlstm", impl=name, T=t, mode="fwd+bwd", ms=time_fwd_bwd(mlstm_chunkwise, xs),
                 bound_ms=mlstm_bound_ms(t, "fwd+bwd"))
            xs = None
            torch.cuda.empty_cache()
        try:
            _mlstm_verify(out, label)
        except Exception as e:  # noqa: BLE001
            emit(out, table="check", what=f"mlstm {label}: verify error", rel_err=float("nan"), error=str(e)[:200])
        torch.cuda.empty_cache()
    _mlstm_apply(*defaults)


# The forget gates' gradient from the boundary states or from sums over the later chunks (chunk_bwd.py's
# FORGET_GRAD_FROM_STATES), run by name: the reverse scan alone either way (at B=8, T=8K and B=1, T=64K), end to end
# (forward+backward, the mlstm table's lengths), and the gradients' errors (B=1, 8 heads) at T = 2K, 16K and 64K,
# with the per-head sum of df over the tokens (what a forget gate bias gets).
MLSTM_FORGET_T = (2048, 16384, 65536)


def group_mlstm_forget(out):
    import torch
    from kernels.mlstm import chunk_bwd as cb, mlstm_chunkwise
    default = cb.FORGET_GRAD_FROM_STATES
    names = {True: "boundary states", False: "sums over the later chunks"}
    try:
        for t in (8192, 65536):
            fn, a, kw = mlstm_record(t)["rscan"]
            for from_states in (True, False):
                cb.FORGET_GRAD_FROM_STATES = from_states
                setting = dict(kw, pair=kw["pair"] if from_states else None, config=cb.rev_scan_config())
                emit(out, table="parts", impl=f"mlstm reverse scan, forget gradient from {names[from_states]}", T=t,
                     ms=bench(lambda: fn(*a, **setting), rep=25))
            a = kw = setting = None
            torch.cuda.empty_cache()
        for from_states in (True, False):
            cb.FORGET_GRAD_FROM_STATES = from_states
            mlstm_rows(out, f"evo mlstm_chunkwise (forget gradient from {names[from_states]})", mlstm_chunkwise)
            for t in MLSTM_FORGET_T:
                for name, err in mlstm_grad_errors(torch.Generator(device="cuda").manual_seed(3), 8, t):
                    if name.startswith("df"):
                        emit(out, table="check", what=f"mlstm forget gradient from {names[from_states]}: {name} "
                             f"bf16 B=1 T={t}", rel_err=err)
                torch.cuda.empty_cache()
    finally:
        cb.FORGET_GRAD_FROM_STATES = default


# The forward without autograd (inference, prefill), run by name: the scan weighted first in either blocks or not
# (chunk_fwd.INFERENCE_WEIGHT_FIRST) at chunks 128 and 256, at the 7B shapes and at B=1 (8 heads) from T=8K to 128K;
# then, at B=1 up to 16K, a lone call's kernel time and first-to-last-kernel span (torch.profiler), and the call
# replayed from a CUDA graph; last, torch.compile's path.
MLSTM_INFERENCE_CASES = ((64, 1024), (8, 8192)) + tuple((1, 1 << e) for e in range(13, 18))


def group_mlstm_inference(out):
    import torch
    from kernels.mlstm import chunk_fwd as cf, mlstm_chunkwise
    from kernels.sparse_benchmark import graphed
    default = cf.INFERENCE_WEIGHT_FIRST, cf.INFERENCE_SMALL_WEIGHT_MAX_CHUNK
    cf.INFERENCE_SMALL_WEIGHT_MAX_CHUNK = 256
    try:
        for b, t in MLSTM_INFERENCE_CASES:
            xs = mlstm_inputs(t, b=b)
            with torch.no_grad():
                for chunk in (128, 256):
                    for weighted in (False, True):
                        cf.INFERENCE_WEIGHT_FIRST = weighted
                        emit(out, table="parts", impl=f"mlstm inference B={b} chunk {chunk} weighted first "
                             f"{weighted}", T=t, ms=bench(lambda: mlstm_chunkwise(*xs, chunk=chunk)))
                if b == 1 and t <= 16384:
                    for weighted in (False, True):
                        cf.INFERENCE_WEIGHT_FIRST = weighted
                        label = f"mlstm inference B=1 chunk 128 weighted first {weighted}"
                        kernels, span = profile_kernels(lambda: mlstm_chunkwise(*xs, chunk=128))
                        emit(out, table="parts", impl=f"{label}: kernels' GPU time", T=t,
                             ms=sum(ms for _, ms in kernels))
                        emit(out, table="parts", impl=f"{label}: first to last kernel", T=t, ms=span)
                        emit(out, table="parts", impl=f"{label}: CUDA graph", T=t,
                             ms=bench(graphed(lambda: mlstm_chunkwise(*xs, chunk=128))))
            xs = None
            torch.cuda.empty_cache()
    finally:
        cf.INFERENCE_WEIGHT_FIRST, cf.INFERENCE_SMALL_WEIGHT_MAX_CHUNK = default
    # under torch.compile (inductor) at B=8, T=8K: without autograd (the op with the inference settings) and
    # forward+backward, against eager
    try:
        compiled = torch.compile(mlstm_chunkwise)
        xs = mlstm_inputs(8192, grad=True)
        with torch.no_grad():
            emit(out, table="check", what="mlstm torch.compile, without autograd, h vs eager B=8 T=8192",
                 rel_err=rel(compiled(*xs), mlstm_chunkwise(*xs)))
            emit(out, table="mlstm", impl="evo mlstm_chunkwise, torch.compile", T=8192, mode="fwd",
                 ms=bench(lambda: compiled(*xs)), bound_ms=mlstm_bound_ms(8192, "fwd"))
        dh = torch.randn_like(xs[2])
        got, want = (output_and_grads(fn, xs, xs, dh)[1:] for fn in (compiled, mlstm_chunkwise))
        emit(out, table="check", what="mlstm torch.compile, gradients vs eager B=8 T=8192",
             rel_err=max(rel(a, b) for a, b in zip(got, want)))
        emit(out, table="mlstm", impl="evo mlstm_chunkwise, torch.compile", T=8192, mode="fwd+bwd",
             ms=time_fwd_bwd(compiled, xs), bound_ms=mlstm_bound_ms(8192, "fwd+bwd"))
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        emit(out, table="mlstm", impl="evo mlstm_chunkwise, torch.compile", T=8192, mode="error",
             error=f"{type(e).__name__}: {e}"[:300])


def group_race_parts(out):
    # every launch of one forward (no grad: what the fwd rows time) and of one forward+backward, in order,
    # with its GPU time, at 4M and 256K
    import torch
    from kernels.race import race_causal
    for p, n_tables in RACE_PL:
        for t in RACE_PARTS_T:
            xs = race_inputs(t, p, n_tables, grad=True)
            do = torch.randn_like(xs[2])

            def fwd():
                with torch.no_grad():
                    race_causal(*xs)

            for mode, fn in (("fwd", fwd), ("fwd+bwd", lambda: torch.autograd.grad(race_causal(*xs), xs[:3], do))):
                kernels, span = profile_kernels(fn)
                for n, (name, ms) in enumerate(kernels):
                    emit(out, table="parts", impl=f"race P{p}L{n_tables} {mode} #{n} {name[:50]}", T=t, ms=ms)
                emit(out, table="parts", impl=f"race P{p}L{n_tables} {mode} first to last kernel", T=t, ms=span)
            xs = do = None
            torch.cuda.empty_cache()


def group_race_sweep(out):
    # run by name: each variant is the defaults with the changes named. The forward's variants at 256K-4M
    # (no grad, as the fwd rows; each checked against the default's o), the host time of a call, the forward
    # with grad (writes phi(q), phi(k), den) and forward+backward variants at 4M, and either hash placement's error.
    import time
    import torch
    from kernels.race import chunk_bwd as cb, chunk_fwd as cf, race_causal
    names_f = ("FUSED_HASH", "FUSED_HASH_WIDE", "SPLIT_STATE", "SPLIT_STATE_WIDE", "BLOCK_V", "TARGET_PROGRAMS",
               "TARGET_PROGRAMS_WIDE", "NUM_WARPS", "NUM_STAGES", "NUM_STAGES_WIDE", "SUMS_WARPS", "HASH_ROWS",
               "HASH_WARPS", "HASH_WARPS_WIDE")
    names_b = ("BWD_BLOCK_V", "BWD_BLOCK_V_WIDE", "DPHI_LOW")
    defaults = {n: getattr(cf, n) for n in names_f} | {n: getattr(cb, n) for n in names_b}

    def setup(changes):  # the module settings named, and race_causal's keywords ("chunk")
        changes = dict(changes)
        kw = dict(chunk=changes.pop("chunk", None))
        for n, val in {**defaults, **changes}.items():
            setattr(cf if n in names_f else cb, n, val)
        return kw

    fused = lambda on: dict(FUSED_HASH=on, FUSED_HASH_WIDE=on)  # noqa: E731
    programs = lambda n: dict(TARGET_PROGRAMS=n, TARGET_PROGRAMS_WIDE=n)  # noqa: E731
    hash_warps = lambda n: dict(HASH_WARPS=n, HASH_WARPS_WIDE=n)  # noqa: E731
    stages = lambda n: dict(NUM_STAGES=n, NUM_STAGES_WIDE=n)  # noqa: E731
    split = dict(SPLIT_STATE=True, SPLIT_STATE_WIDE=True)
    fwd_runs = [("default", {}), ("hash in the scans", fused(True)), ("hash first", fused(False)),
                ("state in two products", split), ("chunk 32", dict(chunk=32)), ("chunk 128", dict(chunk=128)),
                ("programs 512", programs(512)), ("programs 1024", programs(1024)), ("programs 2048", programs(2048)),
                ("BV 64", dict(BLOCK_V=64)),
                ("stages 2", stages(2)), ("stages 3", stages(3)), ("scans 8 warps", dict(NUM_WARPS=8)),
                ("sums 8 warps", dict(SUMS_WARPS=8)), ("hash 4 warps", hash_warps(4)), ("hash 8 warps", hash_warps(8)),
                ("hash rows 64", dict(HASH_ROWS=64))]
    for p, n_tables in RACE_PL:
        for t in RACE_SWEEP_T:
            xs = race_inputs(t, p, n_tables)
            with torch.no_grad():
                setup({})
                want = race_causal(*xs)
                for label, changes in fwd_runs:
                    kw = setup(changes)
                    try:
                        diff = rel(race_causal(*xs, **kw), want)
                        ms = bench(lambda: race_causal(*xs, **kw))
                        emit(out, table="race", impl=f"sweep fwd {label}", P=p, L=n_tables, T=t, mode="fwd", ms=ms,
                             bound_ms=race_bound_ms(t, "fwd"), rel_diff_to_default=diff)
                    except Exception as e:  # noqa: BLE001
                        emit(out, table="race", impl=f"sweep fwd {label}", P=p, L=n_tables, T=t, mode="fwd",
                             error=f"{type(e).__name__}: {e}"[:300])
                setup({})
                # host time of one no-grad call (enqueue only), and calls back to back without an L2 flush
                for _ in range(5):
                    race_causal(*xs)
                torch.cuda.synchronize()
                n = 30
                t0 = time.perf_counter()
                for _ in range(n):
                    race_causal(*xs)
                t1 = time.perf_counter()
                torch.cuda.synchronize()
                t2 = time.perf_counter()
            emit(out, table="parts", impl=f"race P{p}L{n_tables} sweep host enqueue per fwd call", T=t,
                 ms=1e3 * (t1 - t0) / n)
            emit(out, table="parts", impl=f"race P{p}L{n_tables} sweep back-to-back fwd per call", T=t,
                 ms=1e3 * (t2 - t0) / n)
            lo = [x.clone().requires_grad_(True) for x in xs[:3]]
            emit(out, table="race", impl="sweep fwd with grad (writes phi(q), phi(k), den)", P=p, L=n_tables, T=t,
                 mode="fwd", ms=bench(lambda: race_causal(*lo, xs[3])), bound_ms=race_bound_ms(t, "fwd"))
            xs = lo = want = None
            torch.cuda.empty_cache()
        t = RACE_SWEEP_T[-1]
        bwd_runs = [("default", {}), ("BWD_BLOCK_V 128", dict(BWD_BLOCK_V=128, BWD_BLOCK_V_WIDE=128)),
                    ("BWD_BLOCK_V 64", dict(BWD_BLOCK_V=64, BWD_BLOCK_V_WIDE=64)), ("dphi fp32", dict(DPHI_LOW=False)),
                    ("hash in the scans", fused(True)), ("hash first", fused(False)),
                    ("state in two products", split), ("hash 4 warps", hash_warps(4)),
                    ("hash 8 warps", hash_warps(8)), ("stages 2", stages(2)), ("stages 3", stages(3))]
        for label, changes in bwd_runs:
            kw = setup(changes)
            try:
                xs = race_inputs(t, p, n_tables, grad=True)
                do = torch.randn_like(xs[2])
                ms = bench(lambda: torch.autograd.grad(race_causal(*xs, **kw), xs[:3], do))
                emit(out, table="race", impl=f"sweep fwd+bwd {label}", P=p, L=n_tables, T=t, mode="fwd+bwd", ms=ms,
                     bound_ms=race_bound_ms(t, "fwd+bwd"))
            except Exception as e:  # noqa: BLE001
                emit(out, table="race", impl=f"sweep fwd+bwd {label}", P=p, L=n_tables, T=t, mode="fwd+bwd",
                     error=f"{type(e).__name__}: {e}"[:300])
            xs = do = None
            torch.cuda.empty_cache()
        # the error of either hash placement against the fp32 reference: o at an odd T, gradients at T=4096
        from baselines import race as rref
        q, k, v, w = race_inputs(4096, p, n_tables)
        xs = [x.float().requires_grad_(True) for x in (q, k, v)]
        do = torch.randn_like(xs[2]).bfloat16()
        ref_grads = torch.autograd.grad(rref.race_causal_chunked(*xs, w), xs, do.float())
        q7, k7, v7, w7 = race_inputs(70001, p, n_tables)
        ref7 = rref.race_causal_chunked(q7.float(), k7.float(), v7.float(), w7)
        for on in (True, False):
            setup(fused(on))
            with torch.no_grad():
                emit(out, table="check", what=f"sweep race fwd T=70001 P={p} L={n_tables} hash fused {on}",
                     rel_err=rel(race_causal(q7, k7, v7, w7), ref7))
            setup(dict(split, **fused(on)))
            with torch.no_grad():
                emit(out, table="check", what=f"sweep race fwd T=70001 P={p} L={n_tables} hash fused {on}, state in "
                     "two products", rel_err=rel(race_causal(q7, k7, v7, w7), ref7))
            lo = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
            for name, a, b in zip("qkv", torch.autograd.grad(race_causal(*lo, w), lo, do), ref_grads):
                emit(out, table="check", what=f"sweep race grad d{name} T=4096 P={p} L={n_tables} hash fused {on}",
                     rel_err=rel(a, b))
        q7 = k7 = v7 = ref7 = None
    setup({})


# ---------------- correctness on the GPU ----------------

def group_check(out):
    import torch
    from baselines import mlstm as mref, race as rref
    from kernels.mlstm import mlstm_chunkwise
    from kernels.race import race_causal
    g = torch.Generator(device="cuda").manual_seed(1)
    # mLSTM forward at 7B head sizes, and gradients against fp32 autograd of the reference
    for t, chunk in ((2048, 64), (2048, 128), (2048, 256), (2048, 512), (1000, 128)):
        q, k = (torch.randn(1, 8, t, 256, generator=g, device="cuda").bfloat16() for _ in range(2))
        v = torch.randn(1, 8, t, 512, generator=g, device="cuda").bfloat16()
        i = torch.randn(1, 8, t, generator=g, device="cuda")
        f = torch.randn(1, 8, t, generator=g, device="cuda") + 3
        ref = mref.mlstm_chunkwise(q, k, v, i, f, chunk=64)[0].float()
        emit(out, table="check", what=f"mlstm fwd bf16 T={t} chunk={chunk}",
             rel_err=rel(mlstm_chunkwise(q, k, v, i, f, chunk=chunk), ref))
    # gradients against fp32 autograd of the reference on the same bf16-rounded inputs
    t = 1024
    for chunk in (128, 512):
        for name, err in mlstm_grad_errors(g, 2, t, chunk=chunk)[1:]:
            emit(out, table="check", what=f"mlstm grad {name} bf16 T={t} chunk={chunk}", rel_err=err)
    # RACE forward and gradients against the fp32 chunked reference
    for p, n_tables in RACE_PL:
        for t in (4096, 70001):
            q, k, v, w = race_inputs(t, p, n_tables)
            emit(out, table="check", what=f"race fwd bf16 T={t} P={p} L={n_tables}",
                 rel_err=rel(race_causal(q, k, v, w), rref.race_causal_chunked(q.float(), k.float(), v.float(), w)))
        q, k, v, w = race_inputs(4096, p, n_tables)
        xs = [x.float().requires_grad_(True) for x in (q, k, v)]  # q, k, v are bf16 already
        ref = rref.race_causal_chunked(*xs, w)
        do = torch.randn_like(ref).bfloat16()
        ref_grads = torch.autograd.grad(ref, xs, do.float())
        lo = [x.requires_grad_(True) for x in (q, k, v)]
        mine = torch.autograd.grad(race_causal(*lo, w), lo, do)
        for name, a, b in zip("qkv", mine, ref_grads):
            emit(out, table="check", what=f"race grad d{name} bf16 T=4096 P={p} L={n_tables}", rel_err=rel(a, b))
        # forward+backward three times on identical inputs (any difference: not deterministic; the output scan's
        # phi tiles get stages - 1 pipeline buffers, the shape of the mLSTM attends' race, linear.md "The race")
        xs = race_inputs(1 << 18, p, n_tables, grad=True)
        emit(out, table="check", what=f"race 3 runs T=262144 P={p} L={n_tables}, largest difference (o, grads)",
             rel_err=largest_run_difference(race_causal, xs, xs[:3], torch.randn_like(xs[2])))
        xs = None


def group_layers(out):
    # kernels.nn's layers in bf16 on the GPU against their reference layers: the same parameters in fp32 around
    # the baselines' chunkwise mLSTM and chunked RACE. Output, the parameters' gradients, and mLSTM decode by `step`
    # from a prefill's state against the whole-sequence forward.
    import copy
    import torch
    from baselines import mlstm as mref, race as rref
    from kernels.nn import MLSTM, RACEAttention
    torch.manual_seed(0)
    x = torch.randn(1, 2048, 4096, device="cuda")
    layer = MLSTM(dim=4096, n_heads=8, qk_dim=256, v_dim=512).cuda()  # the xLSTM-7B mixing layer's sizes
    ref_layer, layer = copy.deepcopy(layer), layer.bfloat16()

    def around(cell, layer, x):  # the layer's projections and finish around another mLSTM cell
        q, k, v, i, f = (t.transpose(1, 2) for t in layer.project(x))
        return layer.finish(cell(q, k, v, i, f).transpose(1, 2).to(x.dtype), x)

    def reference_cell(*xs):  # fp32 math
        return mref.mlstm_chunkwise(*(t.float() for t in xs))[0]

    # the bf16 layer on the kernels, the fp32 reference layer, and the bf16 layer around the reference cell (the
    # same bf16 activations as the kernels': what sets apart the kernels from bf16's rounding of the layer) and
    # around mlstm_kernels' triton_limit_chunk (fp32 gates), where it is installed
    dy = torch.randn_like(x)
    models = {"kernels": layer, "fp32 reference": ref_layer}
    runs = {"kernels": layer(x.bfloat16()), "fp32 reference": around(reference_cell, ref_layer, x)}
    cells = {"bf16 around the reference cell": reference_cell}
    try:
        from mlstm_kernels.torch import get_mlstm_kernel
        limit = get_mlstm_kernel("chunkwise--triton_limit_chunk")
        cells["bf16 around triton_limit_chunk"] = lambda q, k, v, i, f: limit(q, k, v, i.float(), f.float(),
                                                                              chunk_size=64)
    except ImportError:
        pass
    for label, cell in cells.items():
        models[label] = copy.deepcopy(layer)
        runs[label] = around(cell, models[label], x.bfloat16())
    for label, y in runs.items():
        y.backward(dy.to(y.dtype))
    pairs = [(label, "fp32 reference") for label in runs if label != "fp32 reference"]
    pairs += [(label, "bf16 around the reference cell") for label in runs
              if label not in ("fp32 reference", "bf16 around the reference cell")]
    for label, against in pairs:
        what = f"layer MLSTM bf16 (8 heads, 256/512) T=2048, {label} against {against}:"
        emit(out, table="check", what=f"{what} output", rel_err=rel(runs[label], runs[against]))
        theirs = dict(models[against].named_parameters())
        for name, param in models[label].named_parameters():
            emit(out, table="check", what=f"{what} grad {name}", rel_err=rel(param.grad, theirs[name].grad))
        half = layer.n_heads  # gates.bias: the input gates' biases, then the forget gates'
        for part, sl in (("input", slice(0, half)), ("forget", slice(half, None))):
            emit(out, table="check", what=f"{what} grad gates.bias, {part} gates",
                 rel_err=rel(models[label].gates.bias.grad[sl], theirs["gates.bias"].grad[sl]))
    runs = models = None
    with torch.no_grad():  # decode: 16 steps after a prefill of 1000 tokens (not a whole number of chunks)
        xs = x[:, :1016].bfloat16()
        full = layer(xs)
        _, state = layer(xs[:, :1000], return_state=True)
        steps = []
        for t in range(1000, 1016):
            y_t, state = layer.step(xs[:, t], state)
            steps.append(y_t)
        emit(out, table="check", what="layer MLSTM bf16 16 decode steps after a 1000-token prefill vs forward",
             rel_err=rel(torch.stack(steps, 1), full[:, 1000:]))
    layer = ref_layer = None
    x = torch.randn(1, 8192, 512, device="cuda")
    for p, n_tables in RACE_PL:
        layer = RACEAttention(dim=512, n_heads=4, p=p, n_tables=n_tables, ensembles=2).cuda()
        ref_layer, layer = copy.deepcopy(layer), layer.bfloat16()

        def race_ref_forward(x):
            q, k, v = ref_layer.project(x)
            outs = [rref.race_causal_chunked(q, k, v, w) for w in ref_layer.hyperplanes]
            return ref_layer.merge(torch.stack(outs).mean(0))

        dy = torch.randn_like(x)
        y = layer(x.bfloat16())
        want = race_ref_forward(x)
        what = f"layer RACEAttention bf16 (4 heads of 128, P={p} L={n_tables}, 2 ensembles) T=8192"
        emit(out, table="check", what=f"{what} output", rel_err=rel(y, want))
        y.backward(dy.bfloat16())
        want.backward(dy)
        for name, param in layer.named_parameters():
            emit(out, table="check", what=f"{what} grad {name}",
                 rel_err=rel(param.grad, dict(ref_layer.named_parameters())[name].grad))


# ---------------- driver ----------------

def table(out):
    rows = [json.loads(line) for line in open(os.path.join(out, "results.jsonl"))]
    lines = []
    for r in rows:
        if r["table"] == "group":
            lines.append(f"group  {r['group']}: {r['status']} ({r['seconds']} s)")
        elif r["table"] == "parts":
            lines.append(f"parts  {r['impl']:<48} T={r['T']:<8} {r['ms']:9.3f} ms")
        elif r["table"] == "check":
            lines.append(f"check  {r['what']:<44} rel_err {r['rel_err']:.2e}")
        elif r["table"] == "step":
            lines.append(f"step   B={r['B']:<4} {r['ms']:.4f} ms (eager {r['eager_ms']:.3f}) bound {r['bound_ms']:.4f} "
                         f"= {100 * r['bound_ms'] / r['ms']:.0f}% err {r['rel_err']:.1e}")
        elif "error" in r:
            lines.append(f"{r['table']:<6} {r['impl']:<48} T={r['T']:<8} {r.get('mode', '')}: {r['error'][:80]}")
        else:
            pl = f"P{r['P']}L{r['L']} " if r["table"] == "race" else ""
            lines.append(f"{r['table']:<6} {r['impl']:<48} {pl}T={r['T']:<8} {r['mode']:<7} {r['ms']:9.3f} ms "
                         f"{100 * r['bound_ms'] / r['ms']:5.1f}% of bound")
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--groups", default=",".join(GROUPS))
    parser.add_argument("--group", help="run one group in this process (the driver's child)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per group")
    parser.add_argument("--budget", type=float, default=540, help="seconds for all groups")
    args = parser.parse_args()
    if args.group:
        globals()[f"group_{args.group}"](args.out)
        return
    deadline = time.time() + args.budget
    for group in args.groups.split(","):
        start = time.time()
        timeout = min(args.timeout, deadline - start)
        if timeout < 10:
            emit(args.out, table="group", group=group, status="not run: out of budget", seconds=0)
            continue
        try:
            proc = subprocess.run([sys.executable, "-m", "kernels.linear_benchmark", "--group", group, "--out", args.out],
                                  timeout=timeout, capture_output=True, text=True)
            status = f"exit {proc.returncode}"
            if proc.returncode:
                with open(os.path.join(args.out, "stderr.log"), "a") as fh:
                    fh.write(f"===== {group}\n{proc.stderr[-20000:]}\n")
                status += ": " + proc.stderr.strip().splitlines()[-1][:200] if proc.stderr.strip() else ""
        except subprocess.TimeoutExpired:
            status = f"timeout after {timeout:.0f}s"
        emit(args.out, table="group", group=group, status=status, seconds=round(time.time() - start, 1))
    table(args.out)


if __name__ == "__main__":
    main()
