"""GPU benchmark of the evaluation harness, in one run: every seed kernel against eager and
torch.compile (timed by the harness itself), the verdict of every cheating/broken fixture
(the GPU-only ones included), and the throughput of the warm Evaluator on fresh candidates
(tunable variants of the softmax and rmsnorm seeds: each is new source, so Triton compiles),
and the timer itself: the same kernel timed by the harness's GpuTimer and by the earlier
synchronize-then-events loop, with the host idle and with every core busy.

    python3 -m workers.benchmark --out DIR [--budget-s 270] [--variants 12] [--cpu]

Results go to DIR/harness.jsonl as they come (a cut-short run keeps what it measured) and a
summary table is printed last. docs/benchmarks/harness.md is written from that output.
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import random
import re
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

from workers.protocol import EvalResult
from workers.sandbox import Evaluator, Timeouts

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "workers" / "fixtures"
CORE_TASKS = ["softmax", "rmsnorm", "layernorm", "rope", "swiglu", "cross_entropy", "add_rmsnorm",
              "matmul_bias_gelu", "argmax", "decode_attention"]
# (fixture, language, time_it, expected status). Ones that replace the process come last, so the
# warm process (and its cached baselines) serves everything before them.
FIXTURES_WARM = [
    ("wrong_odd_shapes", "triton", False, "incorrect"), ("nan_output", "triton", False, "incorrect"),
    ("writes_inputs", "triton", False, "incorrect"), ("cached_result", "triton", False, "incorrect"),
    ("uninitialized_output", "triton", False, "incorrect"), ("wrong_shape", "triton", False, "incorrect"),
    ("wrong_dtype", "triton", False, "incorrect"), ("forbidden_direct", "triton", False, "rejected"),
    ("forbidden_alias", "triton", False, "rejected"), ("forbidden_dynamic", "triton", False, "rejected"),
    ("starts_thread", "triton", False, "rejected"),
    ("patches_timer", "triton", False, "rejected"), ("syntax_error", "triton", False, "compile_error"),
    ("missing_entry", "triton", False, "compile_error"), ("too_much_memory", "triton", False, "runtime_error"),
    ("cuda_compile_error", "cuda", False, "compile_error"), ("cuda_ok", "cuda", True, "correct"),
    ("gpu_side_stream", "triton", True, "rejected"),
]
FIXTURES_RESTARTING = [
    ("patches_timer_dynamic", "triton", False, "rejected"), ("gpu_illegal_access", "triton", False, "runtime_error"),
    ("SEED", "triton", False, "correct"), ("crash_out_of_bounds", "triton", False, "runtime_error"),
    ("infinite_loop", "triton", False, "timeout"), ("SEED", "triton", False, "correct"),
]
_TUNABLE = re.compile(r"^(?P<name>[A-Z_][A-Z0-9_]*)\s*=\s*(?P<value>[^#\n]+?)\s*#\s*tunable:\s*(?P<choices>.+)$", re.M)


def seed_source(task: str) -> str:
    from baselines import get_task
    return Path(importlib.util.find_spec(get_task(task).seed).origin).read_text()


def tunable_variants(source: str, count: int, rng: random.Random) -> list[str]:
    """Up to `count` distinct sources with other values on the `# tunable:` lines."""
    found = list(_TUNABLE.finditer(source))
    choices = [[c.strip() for c in m["choices"].split(",")] for m in found]
    current = tuple(m["value"].strip() for m in found)
    combos = [c for c in itertools.product(*choices) if c != current]
    rng.shuffle(combos)
    variants = []
    for combo in combos[:count]:
        text = source
        for m, value in zip(reversed(found), reversed(combo)):  # back to front: offsets stay valid
            line = f"{m['name']} = {value}  # tunable: {m['choices']}"
            text = text[:m.start()] + line + text[m.end():]
        variants.append(text)
    return variants


def busy_host(cores: int):
    """Processes spinning on every core: a host as loaded as a busy Celery worker machine."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]


def timer_under_load(out: Path) -> list[dict]:
    """The softmax seed at its smallest benchmark shape (shortest kernel, so the most exposed to
    host latency), timed by the harness's GpuTimer and by the earlier loop that synchronized
    before recording the start event, on an idle and on a fully loaded host."""
    import torch

    from baselines import get_task
    from workers.harness.timing import GpuTimer

    task = get_task("softmax")
    entry = importlib.import_module(task.seed).entry
    shape = task.shapes[0]
    sets = [task.make_inputs(shape, task.dtypes[0], 1000 + i, torch.device("cuda")) for i in range(3)]
    timer = GpuTimer(torch.device("cuda"))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def synchronize_then_events(trials: int = 60) -> float:
        times = []
        for n in range(trials):
            timer.flush_l2()
            torch.cuda.synchronize()
            start.record()
            entry(*sets[n % 3])
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    rows = []
    for host in ("idle", "loaded"):
        spinners = busy_host(os.cpu_count() or 1) if host == "loaded" else []
        try:
            m = timer.measure(entry, sets)
            rows.append({"kind": "timer", "host": host, "shape": shape, "harness_ms": m.median,
                         "harness_spread": m.spread, "wall_pass_events_ms": m.wall_event_median,
                         "wall_pass_wall_ms": m.wall_median, "sync_then_events_ms": synchronize_then_events()})
        finally:
            for p in spinners:
                p.kill()
                p.wait()
    with (out / "harness.jsonl").open("a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return rows


class Run:
    def __init__(self, out: Path, budget_s: float, gpu: int | None):
        self.out = out
        self.deadline = time.monotonic() + budget_s
        self.log = (out / "harness.jsonl").open("a")
        self.evaluator = Evaluator(gpu, Timeouts(start=180, compile=12, verify=60, baselines=240, time=120))

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def evaluate(self, kind: str, name: str, task: str, source: str, language: str = "triton", time_it: bool = True,
                 **extra) -> dict:
        t0 = time.monotonic()
        try:
            result = self.evaluator.evaluate(task, source, language, time_it=time_it)
        except Exception as e:  # noqa: BLE001 - one harness failure must not end the whole GPU run
            traceback.print_exc()
            result = EvalResult(status="runtime_error", error=f"HARNESS EXCEPTION {type(e).__name__}: {e}",
                                device=self.evaluator.device)
        row = {"kind": kind, "name": name, "task": task, "language": language, "wall_s": time.monotonic() - t0,
               **extra, "result": result.model_dump(mode="json")}
        self.log.write(json.dumps(row) + "\n")
        self.log.flush()
        print(f"[{kind}] {name:24s} {task:18s} {result.status:14s} {row['wall_s']:6.2f}s "
              f"{(result.error or '').splitlines()[0][:110] if result.error else ''}", flush=True)
        return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=270.0)
    parser.add_argument("--variants", type=int, default=12)
    parser.add_argument("--cpu", action="store_true", help="dry run on the CPU interpreter (checks the script)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    timer_rows = [] if args.cpu else timer_under_load(args.out)
    run = Run(args.out, args.budget_s, None if args.cpu else 0)
    rng = random.Random(0)
    rows = []
    try:
        # Seeds of softmax and rmsnorm first: they time the baselines the variants then reuse.
        for task in ("softmax", "rmsnorm"):
            rows.append(run.evaluate("seed", task, task, seed_source(task)))
            for i, variant in enumerate(tunable_variants(seed_source(task), args.variants, rng)):
                rows.append(run.evaluate("throughput", f"{task}-variant-{i}", task, variant))
        for name, language, time_it, expected in FIXTURES_WARM:
            rows.append(run.evaluate("fixture", name, "softmax", (FIXTURES / f"{name}.py").read_text(), language,
                                     time_it, expected=expected))
        cuda_seed = REPO / "kernels" / "rmsnorm_cuda.py"
        if cuda_seed.exists():
            rows.append(run.evaluate("seed", "rmsnorm_cuda", "rmsnorm", cuda_seed.read_text(), "cuda"))
        for task in CORE_TASKS[2:]:
            if run.left() < 60:
                print(f"budget: skipping seed {task}", flush=True)
                continue
            rows.append(run.evaluate("seed", task, task, seed_source(task)))
        for name, language, time_it, expected in FIXTURES_RESTARTING:
            source = seed_source("softmax") if name == "SEED" else (FIXTURES / f"{name}.py").read_text()
            rows.append(run.evaluate("fixture", "seed after restart" if name == "SEED" else name, "softmax", source,
                                     language, time_it, expected=expected))
    finally:
        run.evaluator.close()
        run.log.close()
    summarize(rows, timer_rows)


def summarize(rows: list[dict], timer_rows: list[dict]) -> None:
    if timer_rows:
        print("\n## the timer on an idle and a loaded host (softmax seed, ms)")
        print("| host | shape | GpuTimer (flush overlaps launch) | spread | wall pass: events / wall | synchronize then events |")
        print("|---|---|---|---|---|---|")
        for r in timer_rows:
            print(f"| {r['host']} | {r['shape']} | {r['harness_ms']:.4f} | {100 * r['harness_spread']:.1f}% | "
                  f"{r['wall_pass_events_ms']:.4f} / {r['wall_pass_wall_ms']:.4f} | {r['sync_then_events_ms']:.4f} |")
    print("\n## seeds (timed by the harness; eager, torch.compile and the seed's own baseline in the same process)")
    print("| task | shape | dtype | seed ms | spread | eager ms | compile ms | x eager | x compile | x seed (itself) | seed %SOL | eager %SOL | compile %SOL |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        if row["kind"] != "seed":
            continue
        r = row["result"]
        if r["status"] != "correct":
            print(f"| {row['name']} | | | {r['status']}: {(r['error'] or '')[:80]} | | | | | | | | | |")
        for t in r["timings"]:
            sol = t["sol_ms"]
            pct = lambda ms: f"{100 * sol / ms:.0f}%" if sol and ms else "-"  # noqa: E731
            f = lambda v, s=".4f": "-" if v is None else format(v, s)  # noqa: E731
            print(f"| {row['name']} | {','.join(f'{k}={v}' for k, v in t['shape'].items())} | {t['dtype']} | "
                  f"{f(t['median_ms'])} | {100 * t['spread']:.1f}% | {f(t['eager_ms'])} | {f(t['compile_ms'])} | "
                  f"{f(t['speedup_eager'], '.2f')} | {f(t['speedup_compile'], '.2f')} | {f(t['speedup_seed'], '.2f')} | "
                  f"{pct(t['median_ms'])} | "
                  f"{pct(t['eager_ms'])} | {pct(t['compile_ms'])} |")
    print("\n## fixtures")
    print("| fixture | expected | got | ok | wall s | error (first line) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        if row["kind"] == "fixture":
            r = row["result"]
            first = (r["error"] or "").splitlines()[0][:100] if r["error"] else ""
            print(f"| {row['name']} | {row['expected']} | {r['status']} | {'yes' if r['status'] == row['expected'] else 'NO'} "
                  f"| {row['wall_s']:.2f} | {first} |")
    print("\n## throughput (warm process, baselines cached, fresh source per candidate)")
    for task in ("softmax", "rmsnorm"):
        batch = [row for row in rows if row["kind"] == "throughput" and row["task"] == task]
        if not batch:
            continue
        total = sum(row["wall_s"] for row in batch)
        statuses = {s: sum(1 for r in batch if r["result"]["status"] == s) for s in {r["result"]["status"] for r in batch}}
        phases = {p: statistics.mean(r["result"]["phases"].get(p, 0.0) for r in batch) for p in ("compile", "verify", "time")}
        print(f"{task}: {len(batch)} candidates in {total:.1f} s = {60 * len(batch) / total:.1f} per GPU-minute; "
              f"statuses {statuses}; mean phases s: " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()))
    starts = [row["result"]["phases"]["start"] for row in rows if "start" in row["result"]["phases"]]
    if starts:
        print(f"process starts: {len(starts)}, {', '.join(f'{s:.1f}' for s in starts)} s")
    seeds_baselines = [row["result"]["phases"].get("baselines", 0.0) for row in rows if row["kind"] == "seed"]
    if seeds_baselines:
        print(f"baseline timing (eager + torch.compile + seed, once per task per process): "
              f"mean {statistics.mean(seeds_baselines):.1f} s per task")


if __name__ == "__main__":
    main()
