"""How fast the leaderboard renders with many candidates in the database.

    python3 -m evo.web.bench                      # 100,000 candidates in a fresh SQLite file
    python3 -m evo.web.bench --url postgresql+psycopg://postgres@127.0.0.1:5432/evo_web_bench

Fills the database (schema by the Alembic migrations, as `evo serve` would find it) with
jobs whose candidates have realistic rows: source of a few kB, four per-shape timings,
70% correct verdicts, several tasks and devices. Then requests the pages in-process
(FastAPI's TestClient: the full app, without the network) and prints the median and
worst time per page. The URL's database is emptied first.
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import create_engine, insert, select
from sqlalchemy.orm import sessionmaker

from db.models import Base, Candidate, Evaluation, Job, JobCandidate

TASKS = ["softmax", "rmsnorm", "layernorm", "cross_entropy", "swiglu", "rope", "add_rmsnorm", "race_attention"]
DEVICES = ["NVIDIA H200", "NVIDIA H100 80GB HBM3", "cpu-interpreter"]
VERDICTS = ["correct"] * 70 + ["incorrect"] * 12 + ["compile_error"] * 10 + ["runtime_error"] * 5 + ["timeout"] * 3
SOURCE = "import torch\nimport triton\nimport triton.language as tl\n\n" + "# a line of kernel code\n" * 120


def fill(url: str, candidates: int, per_job: int, seed: int = 0) -> None:
    from db.migrate import upgrade

    engine = create_engine(url)
    Base.metadata.drop_all(engine)
    with engine.begin() as conn:  # a previous migration run leaves its version table behind
        conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    upgrade(url)
    rng = random.Random(seed)
    t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    n_jobs = max(candidates // per_job, 1)
    with engine.begin() as conn:
        conn.execute(insert(Job), [dict(
            task=TASKS[j % len(TASKS)], strategy=rng.choice(["tune", "evoengineer-full", "eoh", "funsearch"]),
            budget=45, llm_model="qwen3-coder", state="done", generation=per_job // 5, calls_used=45,
            config={"device": DEVICES[j % len(DEVICES)]}, created_at=t0 + timedelta(hours=j)) for j in range(n_jobs)])
        job_ids = conn.scalars(select(Job.id).order_by(Job.id)).all()
        batch = 10_000
        for start in range(0, candidates, batch):
            rows = range(start, min(start + batch, candidates))
            first_id = conn.execute(insert(Candidate).returning(Candidate.id, sort_by_parameter_order=True), [dict(
                task=TASKS[(i // per_job) % len(TASKS)], language="triton", source=f"# candidate {i}\n{SOURCE}",
                content_hash=f"{i:064x}", harness_version="1", name=f"idea {i}",
                created_at=t0 + timedelta(seconds=i)) for i in rows]).scalars().all()
            conn.execute(insert(JobCandidate), [dict(
                job_id=job_ids[min(i // per_job, n_jobs - 1)], candidate_id=cid, generation=(i % per_job) // 5,
                operator="mutation", parent_ids=[cid - 1] if i % per_job else []) for i, cid in zip(rows, first_id)])
            evaluations = []
            for i, cid in zip(rows, first_id):
                status = rng.choice(VERDICTS)
                runtime = rng.uniform(0.05, 2.0) if status == "correct" else None
                timings = [{"shape": {"M": 4096 * k, "N": 4096}, "dtype": "bfloat16", "median_ms": runtime or 0.0,
                            "spread": 0.02, "n": 100, "wall_ms": 0.0, "eager_ms": 1.0} for k in range(1, 5)]
                evaluations.append(dict(
                    candidate_id=cid, device=DEVICES[(i // per_job) % len(DEVICES)], status=status, attempts=1,
                    error=None if status == "correct" else f"{status}: something went wrong\n" * 5,
                    timings=timings if runtime else [], runtime_ms=runtime,
                    speedup_eager=1.0 / runtime if runtime else None, speedup_compile=0.8 / runtime if runtime else None,
                    speedup_seed=0.5 / runtime if runtime else None, sol_fraction=0.04 / runtime if runtime else None,
                    finished_at=t0 + timedelta(seconds=i + 30)))
            conn.execute(insert(Evaluation), evaluations)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")  # what autovacuum does soon after a bulk load
    engine.dispose()


def time_pages(url: str, paths: list[str], repeats: int) -> list[tuple[str, float, float, int]]:
    from fastapi.testclient import TestClient

    from evo.web import create_app

    engine = create_engine(url)
    client = TestClient(create_app(sessionmaker(engine, expire_on_commit=False), api_token=""))
    out = []
    for path in paths:
        client.get(path)  # warm: templates compiled, connection pooled, pages cached by the database
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            response = client.get(path)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (path, response.status_code, response.text[:200])
        out.append((path, statistics.median(times), max(times), len(response.content)))
    engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="database URL (emptied first); default: a fresh SQLite file")
    parser.add_argument("--candidates", type=int, default=100_000)
    parser.add_argument("--per-job", type=int, default=100, help="candidates per job")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    url = args.url or f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    started = time.perf_counter()
    fill(url, args.candidates, args.per_job)
    print(f"filled {args.candidates} candidates ({args.per_job} per job) in {time.perf_counter() - started:.1f} s: {url}")
    paths = ["/", "/?task=softmax", "/?gpu=NVIDIA%20H200&sort=speedup_compile", "/api/leaderboard",
             "/jobs", "/jobs/1", f"/candidates/{args.candidates // 2}"]
    print(f"{'page':45} {'median ms':>10} {'max ms':>8} {'bytes':>8}")
    for path, median, worst, size in time_pages(url, paths, args.repeats):
        print(f"{path:45} {median:10.1f} {worst:8.1f} {size:8d}")


if __name__ == "__main__":
    main()
