"""A small but complete database for the web tests, on SQLite and on PostgreSQL.

PostgreSQL runs in its own database (`evo_web_test`, created here on the server of
EVO_TEST_POSTGRES_URL) so it never collides with the migration tests on database `test`.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker

from db.models import Base, Candidate, Evaluation, Job, JobCandidate, LLMCall
from evo.web import create_app
from workers.protocol import content_hash

TOKEN = "test-token"
PG_DATABASE = "evo_web_test"
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


def postgres_url(database: str) -> str | None:
    """`database` on the server of EVO_TEST_POSTGRES_URL, created if missing; None without the variable."""
    base = os.environ.get("EVO_TEST_POSTGRES_URL")
    if not base:
        return None
    admin = create_engine(make_url(base).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}):
            conn.execute(text(f'CREATE DATABASE "{database}"'))
    admin.dispose()
    return make_url(base).set(database=database).render_as_string(hide_password=False)


@contextmanager
def fresh_engine(kind: str, directory, pg_database: str):
    """An empty schema on SQLite (a file in `directory`) or PostgreSQL; dropped afterwards."""
    url = f"sqlite:///{directory / 'web.db'}" if kind == "sqlite" else postgres_url(pg_database)
    if url is None:
        pytest.skip("EVO_TEST_POSTGRES_URL is not set")
    engine = create_engine(url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    try:
        yield engine
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def engine(request, tmp_path_factory):
    with fresh_engine(request.param, tmp_path_factory.mktemp("web"), PG_DATABASE) as engine:
        yield engine


def source(n: int, block: int = 1024) -> str:
    return f'"""candidate {n}"""\nimport torch\n\nBLOCK = {block}  # tunable: 256, 512, 1024\n\n\ndef entry(x):\n    return torch.softmax(x, -1)\n'


def timings(median: float, eager: float) -> list[dict]:
    return [{"shape": {"M": 4096, "N": 4096}, "dtype": "bfloat16", "median_ms": median, "spread": 0.02, "n": 100,
             "wall_ms": median * 1.1, "eager_ms": eager, "compile_ms": eager * 0.8, "seed_ms": 0.3,
             "speedup_eager": eager / median, "speedup_compile": eager * 0.8 / median, "speedup_seed": 0.3 / median,
             "sol_ms": 0.05, "sol_fraction": 0.05 / median}]


def add_candidate(s, task, n, job, generation, operator, parents, status, runtime=None, speedup=None,
                  device="NVIDIA H200", error=None, llm_call=None, block=1024):
    src = source(n, block)
    c = Candidate(task=task, language="triton", source=src, content_hash=content_hash(src, task),
                  harness_version="1", name=f"{task} idea {n}", thought=f"why {n}", created_at=T0 + timedelta(minutes=n))
    s.add(c)
    s.flush()
    s.add(JobCandidate(job_id=job.id, candidate_id=c.id, generation=generation, operator=operator,
                       parent_ids=[p.id for p in parents], llm_call_id=llm_call.id if llm_call else None))
    if status is not None:
        s.add(Evaluation(candidate_id=c.id, device=device, status=status, attempts=1, error=error,
                         timings=timings(runtime, runtime * speedup) if runtime else [], runtime_ms=runtime,
                         speedup_eager=speedup, speedup_compile=speedup * 0.8 if speedup else None,
                         speedup_seed=speedup / 1.0 if speedup else None, sol_fraction=0.05 / runtime if runtime else None,
                         environment={"torch": "2.11.0", "triton": "3.6.0"}, finished_at=T0 + timedelta(minutes=n, seconds=30)))
    s.flush()
    return c


@pytest.fixture(scope="session")
def data(engine):
    return populate(engine)


def populate(engine) -> dict[str, int]:
    """Job A (softmax, tune, done): seed -> {1.5x, compile error} -> 1.5x's child at 2x, and one pending.
    Job B (rmsnorm, LLM strategy, running): a seed and one LLM-made child, on the CPU interpreter too."""
    Session = sessionmaker(engine, expire_on_commit=False)
    with Session() as s:
        a = Job(task="softmax", strategy="tune", budget=4, state="done", generation=2, calls_used=4,
                created_at=T0, finished_at=T0 + timedelta(hours=1))
        b = Job(task="rmsnorm", strategy="evoengineer-full", budget=45, state="running", generation=1, calls_used=1,
                llm_model="qwen3-coder", llm_endpoint="http://llm.local/v1", created_at=T0 + timedelta(hours=2))
        s.add_all([a, b])
        s.flush()
        seed = add_candidate(s, "softmax", 1, a, 0, "seed", [], "correct", 0.30, 1.0, block=256)
        fast = add_candidate(s, "softmax", 2, a, 1, "tune", [seed], "correct", 0.20, 1.5, block=512)
        broken = add_candidate(s, "softmax", 3, a, 1, "tune", [seed], "compile_error",
                               error="CompilationError: BLOCK must be a power of 2")
        fastest = add_candidate(s, "softmax", 4, a, 2, "tune", [fast], "correct", 0.15, 2.0)
        pending = add_candidate(s, "softmax", 5, a, 2, "tune", [fast], "pending")
        a.best_candidate_id = fastest.id
        call = LLMCall(job_id=b.id, endpoint="http://llm.local/v1", model="qwen3-coder", request_hash="ab" * 32,
                       prompt=[{"role": "system", "content": "You write Triton kernels."},
                               {"role": "user", "content": "Make RMSNorm faster than 0.40 ms."}],
                       reply="name: fused rmsnorm\n```python\ndef entry(x, w): ...\n```", prompt_tokens=1200,
                       completion_tokens=800, latency_s=12.5)
        s.add(call)
        s.flush()
        rms_seed = add_candidate(s, "rmsnorm", 6, b, 0, "seed", [], "correct", 0.40, 1.0)
        rms_llm = add_candidate(s, "rmsnorm", 7, b, 1, "mutation", [rms_seed], "correct", 0.25, 1.6, llm_call=call)
        cpu = add_candidate(s, "rmsnorm", 8, b, 1, "crossover", [rms_seed], "correct", 3.0, 1.1, device="cpu-interpreter")
        b.best_candidate_id = rms_llm.id
        s.commit()
        ids = dict(job_a=a.id, job_b=b.id, seed=seed.id, fast=fast.id, broken=broken.id, fastest=fastest.id,
                   pending=pending.id, rms_seed=rms_seed.id, rms_llm=rms_llm.id, cpu=cpu.id, call=call.id)
    return ids


@pytest.fixture(scope="session")
def session_factory(engine, data):
    return sessionmaker(engine, expire_on_commit=False)


@pytest.fixture(scope="session")
def client(session_factory):
    return TestClient(create_app(session_factory, api_token=TOKEN, broker_url=""))


@pytest.fixture
def token():
    return TOKEN


@pytest.fixture
def auth():
    return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def isolated_factory(request, tmp_path_factory):
    """Its own populated database, for tests that write at random (schemathesis)."""
    with fresh_engine(request.param, tmp_path_factory.mktemp("isolated"), "evo_web_isolated") as engine:
        populate(engine)
        yield sessionmaker(engine, expire_on_commit=False)


@pytest.fixture(scope="module")
def sqlite_factory(tmp_path_factory):
    """Its own populated SQLite database (the browser test needs one database, not both)."""
    with fresh_engine("sqlite", tmp_path_factory.mktemp("sqlite"), "") as engine:
        populate(engine)
        yield sessionmaker(engine, expire_on_commit=False)
