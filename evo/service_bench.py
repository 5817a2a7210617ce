"""GPU benchmark of the whole service: `evo optimize TASK --strategy tune` on the embedded
default (its own Redis and workers, one per GPU), one task after another, then the evaluator
alone on the same candidate sources, for comparison.

    python3 -m evo.service_bench --tasks softmax,rmsnorm,swiglu --budget 8 --out DIR

Measures per task: time from `evo optimize` starting to the first finished evaluation,
evaluations per GPU-minute through the service (job start to last verdict) and through a
bare `workers.sandbox.Evaluator` (fresh process, same sources, same order), the best speedup
found, and the best-so-far curve per generation. Writes DIR/service.json and prints tables.
A deadline bounds the run: what is left unmeasured is reported as such.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_optimize(task: str, budget: int, samplers: int, home: Path, log: Path, timeout: float) -> tuple[int, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("EVO_BROKER_URL", "EVO_DATABASE_URL")}
    env.update({"EVO_HOME": str(home), "COLUMNS": "160"})
    started = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", "from evo.cli import app; app()", "optimize", task,
                                 "--strategy", "tune", "--budget", str(budget), "--samplers", str(samplers)],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # the CLI stops its Redis and workers
            rc = proc.wait(60)
    return rc, started


def job_report(db_url: str, task: str, started: float) -> dict:
    from sqlalchemy import select

    from db.models import Candidate, Evaluation, Job, JobCandidate
    from db.session import session_scope
    from evo.leaderboard import generation_curve, job_progress

    with session_scope(db_url) as s:
        job = s.scalars(select(Job).where(Job.task == task).order_by(Job.id.desc())).first()
        if job is None:
            return {"task": task, "error": "no job was created"}
        rows = s.execute(select(Evaluation, Candidate.source).join(Candidate)
                         .join(JobCandidate, JobCandidate.candidate_id == Candidate.id)
                         .where(JobCandidate.job_id == job.id, Evaluation.status != "pending")
                         .order_by(Evaluation.finished_at)).all()
        progress = job_progress(s, job.id)
        curve = [c.as_dict() for c in generation_curve(s, job.id)]
        finished = [ev.finished_at.timestamp() for ev, _ in rows]
        created = job.created_at.timestamp()
        seed_id = s.scalar(select(JobCandidate.candidate_id).where(JobCandidate.job_id == job.id,
                                                                   JobCandidate.generation == 0))
        span = (finished[-1] - created) if finished else None
        return {
            "task": task, "job": job.id, "state": job.state, "error": job.error, "device": progress.device,
            "evaluated": len(rows), "valid": progress.valid,
            "statuses": {st: sum(1 for ev, _ in rows if ev.status == st) for st in {ev.status for ev, _ in rows}},
            "first_eval_s_from_command": (finished[0] - started) if finished else None,
            "first_eval_s_from_submit": (finished[0] - created) if finished else None,
            "service_span_s": span,
            "service_per_gpu_min": 60 * len(rows) / span if span else None,
            # After the first verdict (which pays process start and the eager/compile/seed baselines):
            "service_steady_per_gpu_min": 60 * (len(rows) - 1) / (finished[-1] - finished[0])
            if len(rows) > 1 and finished[-1] > finished[0] else None,
            "best_speedup_eager": progress.best_speedup_eager, "best_speedup_compile": progress.best_speedup_compile,
            "best_speedup_seed": progress.best_speedup_seed, "best_sol_fraction": progress.best_sol_fraction,
            "best_runtime_ms": progress.best_runtime_ms,
            "seed_runtime_ms": next((ev.runtime_ms for ev, _ in rows if ev.candidate_id == seed_id), None),
            "phases_mean_s": _mean_phases([ev.phases for ev, _ in rows]),
            "curve": curve,
            "sources": [src for _, src in rows],
        }


def _mean_phases(phases: list[dict]) -> dict:
    keys = sorted({k for p in phases for k in p})
    return {k: sum(p.get(k, 0.0) for p in phases) / len(phases) for k in keys} if phases else {}


def evaluator_alone(task: str, sources: list[str], until: float) -> dict:
    """Evaluate the sources in one fresh Evaluator, stopping early at time `until`."""
    from workers.devices import gpu_count
    from workers.sandbox import Evaluator

    started = time.time()
    statuses, done_at = [], []
    with Evaluator(gpu=0 if gpu_count() else None) as e:
        for source in sources:
            if time.time() > until:
                break
            statuses.append(e.evaluate(task, source, "triton", time_it=True).status)
            done_at.append(time.time())
    if not done_at:
        return {"evaluated": 0}
    span = done_at[-1] - started
    steady = done_at[-1] - done_at[0]
    return {"evaluated": len(done_at), "span_s": span, "per_gpu_min": 60 * len(done_at) / span,
            "first_s": done_at[0] - started,
            "steady_per_gpu_min": 60 * (len(done_at) - 1) / steady if len(done_at) > 1 and steady > 0 else None,
            "statuses": {s: statuses.count(s) for s in set(statuses)}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="softmax,rmsnorm,swiglu")
    ap.add_argument("--budget", type=int, default=8)
    ap.add_argument("--samplers", type=int, default=4)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--deadline", type=float, default=220.0, help="seconds for the whole run")
    ap.add_argument("--alone-reserve", type=float, default=30.0, help="seconds kept for the evaluator-alone runs")
    args = ap.parse_args()
    t_start = time.time()
    home = args.out / "home"
    home.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{home / 'evo.db'}"
    tasks = [t for t in args.tasks.split(",") if t]
    reports = []
    for i, task in enumerate(tasks):
        # Equal shares of what is left, less a reserve for one evaluator-alone run.
        share = (args.deadline - args.alone_reserve - (time.time() - t_start)) / (len(tasks) - i)
        if share < 20:
            reports.append({"task": task, "error": "not run: out of time"})
            continue
        rc, started = run_optimize(task, args.budget, args.samplers, home, args.out / f"optimize-{task}.log", share)
        report = job_report(db_url, task, started)
        report.update(optimize_rc=rc, optimize_wall_s=time.time() - started, optimize_timeout_s=share)
        reports.append(report)
        print(f"[{time.time() - t_start:.0f}s] {task}: rc {rc}, {report.get('evaluated')} evaluated", flush=True)
    for report in reports:
        # The evaluator alone on the same sources, cut at the deadline (None: no time left to start).
        fits = report.get("sources") and time.time() - t_start < args.deadline - 15
        report["evaluator_alone"] = (evaluator_alone(report["task"], report["sources"], t_start + args.deadline)
                                     if fits else None)
    for report in reports:
        report.pop("sources", None)
    (args.out / "service.json").write_text(json.dumps({"reports": reports, "wall_s": time.time() - t_start},
                                                      indent=1, default=str))

    def f(x, spec=".2f"):
        return "-" if x is None else format(x, spec)

    print("\n| task | state | evaluated | valid | first verdict s (cmd / submit) | cand/GPU-min service (steady) "
          "| evaluator alone (steady) | best vs eager | vs compile | vs seed | % SOL |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in reports:
        alone = r.get("evaluator_alone") or {}
        print(f"| {r['task']} | {r.get('state', '-')} | {r.get('evaluated', '-')} | {r.get('valid', '-')} | "
              f"{f(r.get('first_eval_s_from_command'), '.1f')} / {f(r.get('first_eval_s_from_submit'), '.1f')} | "
              f"{f(r.get('service_per_gpu_min'), '.1f')} ({f(r.get('service_steady_per_gpu_min'), '.1f')}) | "
              f"{f(alone.get('per_gpu_min'), '.1f')} ({f(alone.get('steady_per_gpu_min'), '.1f')}) | "
              f"{f(r.get('best_speedup_eager'))} | "
              f"{f(r.get('best_speedup_compile'))} | {f(r.get('best_speedup_seed'))} | "
              f"{f(None if r.get('best_sol_fraction') is None else 100 * r['best_sol_fraction'], '.0f')} |")
    print("\n| task | gen | proposed | evaluated | valid | gen best ms | best ms | best vs seed |")
    print("|---|---|---|---|---|---|---|---|")
    for r in reports:
        for c in r.get("curve", []):
            print(f"| {r['task']} | {c['generation']} | {c['proposed']} | {c['evaluated']} | {c['valid']} | "
                  f"{f(c['gen_best_runtime_ms'], '.4f')} | {f(c['best_runtime_ms'], '.4f')} | {f(c['best_speedup_seed'])} |")


if __name__ == "__main__":
    main()
