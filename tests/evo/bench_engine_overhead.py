"""The engine's own cost per candidate, on the CPU: prompt build, reply parsing, the DB
record and cache lookup, and a whole Full generation through the real openai client
against the local fake server (zero model latency). Compared with one evaluation of the
seed on the CPU interpreter. Prints a markdown table.

    python3 -m tests.evo.bench_engine_overhead   # EVO_TEST_POSTGRES_URL adds PostgreSQL rows
"""
from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.orm import sessionmaker

from db.models import Base
from db.session import get_sessionmaker
from evo.llm import ChatRequest, LLMClient, load_settings
from evo.llm.completion import Completion
from evo.strategies import JobInfo, Member, get_strategy
from evo.traverse import Ask
from evo.traverse.parse import parse_reply
from tests.evo.fake_openai import FakeOpenAI, Reply

SEED = (Path(__file__).parents[2] / "kernels" / "softmax.py").read_text()
TIMINGS = tuple({"shape": {"M": m, "N": n}, "dtype": "bfloat16", "median_ms": 0.05, "speedup_eager": 1.3,
                 "sol_fraction": 0.5} for m, n in [(8192, 4096), (4096, 32768), (1024, 131072)])
REPLY = f"NAME: variant\nTHOUGHT: use fewer warps per row so more rows are resident.\n\n```python\n{SEED}```\n"
REPS = 50


def history(n: int) -> list[Member]:
    rng = random.Random(0)
    members = [Member(1, SEED, "triton", 0, "seed", (), "correct", 1.0, name="seed", timings=TIMINGS)]
    for cid in range(2, n + 1):
        ok = rng.random() < 0.6
        members.append(Member(cid, SEED + f"\n# {cid}\n", "triton", 1 + cid // 4, "mutation", (1,),
                              "correct" if ok else "compile_error", rng.uniform(0.5, 1.5) if ok else None,
                              error=None if ok else "CompilationError: at 10:4: " + "x" * 400, name=f"idea {cid}",
                              thought=f"thought {cid}: " + "because " * 30, timings=TIMINGS if ok else ()))
    return members


def median_ms(fn, reps=REPS) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def job(generation=10) -> JobInfo:
    return JobInfo(1, "softmax", "evoengineer-full", "triton", 10_000, 0, generation, {"seed": 0}, "NVIDIA H200")


def db_rows(name: str, factory) -> list[tuple[str, float]]:
    client = LLMClient(load_settings({"EVO_LLM_MODEL": "m", "EVO_LLM_BASE_URL": "http://127.0.0.1:1/v1"}), factory)
    counter = iter(range(10**9))

    def store():
        reqs = [ChatRequest(({"role": "user", "content": "p" * 20000},), key=f"{next(counter)}") for _ in range(4)]
        routed = [(r, client.settings.endpoints[0]) for r in reqs]
        hashes = [client.hash_of(e, r) for r, e in routed]
        client._cached(hashes)
        client._store(routed, hashes, {}, {i: Completion(REPLY, 5000, 1000, 10.0) for i in range(4)})

    store()  # create the connection pool
    return [(f"cache lookup + record of the LLM call ({name})", median_ms(store) / 4)]


def main() -> None:
    rows = []
    members = history(45)
    full = get_strategy("evoengineer-full")
    asks = [Ask("crossover", (members[1], members[2])), Ask("mutation", (members[3],))] * 2
    rng = random.Random(0)
    requests = full.traverse.requests(job(), members, asks, rng, members[:5])
    chars = statistics.mean(len(m["content"]) for r in requests for m in r.messages) * 2
    rows.append((f"prompt build (Full, 45 members, ~{chars / 4 / 1000:.1f}k tokens)",
                 median_ms(lambda: full.traverse.requests(job(), members, asks, rng, members[:5])) / 4))
    rows.append(("reply parsing (3 KB kernel)", median_ms(lambda: parse_reply(REPLY, arity=1))))

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        Base.metadata.create_all(create_engine(url))
        rows += db_rows("SQLite, WAL", get_sessionmaker(url))
        pg = os.environ.get("EVO_TEST_POSTGRES_URL")
        if pg:
            admin = create_engine(pg)
            with admin.begin() as conn:
                conn.execute(text("DROP SCHEMA IF EXISTS evo_bench_llm CASCADE"))
                conn.execute(text("CREATE SCHEMA evo_bench_llm"))
            engine = create_engine(pg, connect_args={"options": "-csearch_path=evo_bench_llm"})
            Base.metadata.create_all(engine)
            rows += db_rows("PostgreSQL", sessionmaker(engine, expire_on_commit=False))
            engine.dispose()
            with admin.begin() as conn:
                conn.execute(text("DROP SCHEMA evo_bench_llm CASCADE"))

        with FakeOpenAI(lambda body, n: Reply(REPLY.replace("# the", f"# {n}"))) as server:
            llm = LLMClient(load_settings(server.env(EVO_LLM_CACHE="0")), get_sessionmaker(url))
            generation = iter(range(10, 10**6))
            rows.append(("whole Full generation per candidate: prompts + HTTP (openai client, local server, "
                         "no model time) + parse + SQLite",
                         median_ms(lambda: full.propose(job(next(generation)), members, random.Random(0), llm), 20) / 4))

    from workers.sandbox import Evaluator
    with Evaluator() as evaluator:
        evaluator.evaluate("softmax", SEED, "triton")  # start the process and warm the imports
        rows.append(("for scale: one evaluation of the seed on the CPU interpreter",
                     median_ms(lambda: evaluator.evaluate("softmax", SEED, "triton"), 3)))

    print("| step (per candidate) | median ms |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} |")


if __name__ == "__main__":
    main()
