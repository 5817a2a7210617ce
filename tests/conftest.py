import os

# Triton kernels run on CPU tensors in CI; the variable must be set before kernel modules are imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

# --- service fixtures: database, Redis, real Celery worker subprocesses --------------------

import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def sqlite_db(tmp_path, monkeypatch):
    """A migrated SQLite database in tmp_path, set as EVO_DATABASE_URL for this process."""
    from db.migrate import upgrade
    url = f"sqlite:///{tmp_path / 'evo.db'}"
    monkeypatch.setenv("EVO_DATABASE_URL", url)
    monkeypatch.setenv("EVO_HOME", str(tmp_path))
    upgrade(url)
    return url


@contextmanager
def _postgres_schema(name: str):
    """A fresh PostgreSQL schema of EVO_TEST_POSTGRES_URL's database, so tests that run side by
    side stay apart; yields a URL whose search_path is that schema. Skips without the variable."""
    from sqlalchemy import create_engine, text
    base = os.environ.get("EVO_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("EVO_TEST_POSTGRES_URL is not set")
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {name} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {name}"))
    try:
        yield f"{base}?options=-csearch_path%3D{name}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {name} CASCADE"))
        admin.dispose()


@pytest.fixture
def postgres_schema():
    """`with postgres_schema("name") as url:` a fresh schema of the test PostgreSQL database."""
    return _postgres_schema


def redis_url_for(db_number: int) -> str:
    """EVO_TEST_REDIS_URL (default the local server) with the database number replaced."""
    base = os.environ.get("EVO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    return f"{base.rsplit('/', 1)[0]}/{db_number}"


@pytest.fixture
def redis_url(request):
    """The test module's own Redis database (module attribute REDIS_DB), emptied before and after."""
    import redis
    url = redis_url_for(getattr(request.module, "REDIS_DB", 5))
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis at {url}")
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


class Cluster:
    """Worker subprocesses and a Celery app for one broker and one database; stops them all."""

    def __init__(self, tmp_path: Path, db_url: str, broker_url: str):
        from workers.celery_app import create_app
        self.tmp_path = tmp_path
        self.logs = tmp_path / "logs"
        self.logs.mkdir(exist_ok=True)
        self.db_url = db_url
        self.broker_url = broker_url
        self.env = {
            "EVO_DATABASE_URL": db_url, "EVO_BROKER_URL": broker_url, "EVO_HOME": str(tmp_path),
            # Short limits so a lost task comes back within seconds, not hours.
            "EVO_TASK_TIME_LIMIT": "15", "EVO_VISIBILITY_TIMEOUT": "16", "EVO_RESTORE_INTERVAL": "1",
            "EVO_ADVANCE_RECHECK_S": "0.5", "TRITON_INTERPRET": "1",
        }
        self.app = create_app(broker_url)
        self.procs: list[subprocess.Popen] = []

    def start_worker(self, name: str, queues: str, **extra_env) -> subprocess.Popen:
        from evo.embedded import WorkerSpec, start_worker
        env = {**self.env, **extra_env}
        spec = WorkerSpec(name, queues, {"EVO_WORKER_DEVICE": "cpu"} if "gpu" in queues else {})
        proc = start_worker(spec, self.logs, env)
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL the worker's whole process group (main process and pool children)."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def submit(self, task: str = "softmax", budget: int = 2, samplers: int = 2, seed: int = 0) -> int:
        from db.session import session_scope
        from evo.jobs import submit_job
        with session_scope(self.db_url) as s:
            return submit_job(s, task, "tune", budget, config={"seed": seed, "samplers": samplers},
                              celery_app=self.app).id

    def log_tail(self, n: int = 3000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-n:]}" for p in sorted(self.logs.glob("*.log")))

    def stop(self) -> None:
        from evo.embedded import stop_workers
        stop_workers(self.procs, grace=5)
        self.app.close()


@pytest.fixture
def cluster_for(tmp_path, sqlite_db, monkeypatch):
    """cluster_for(broker_url) -> a Cluster on the test's database; all are stopped at the end."""
    for key in ("EVO_TASK_TIME_LIMIT", "EVO_VISIBILITY_TIMEOUT", "EVO_RESTORE_INTERVAL"):
        monkeypatch.delenv(key, raising=False)
    made = []

    def make(broker_url: str) -> Cluster:
        made.append(Cluster(tmp_path, sqlite_db, broker_url))
        return made[-1]

    yield make
    for c in made:
        c.stop()


@pytest.fixture
def cluster(cluster_for, redis_url):
    return cluster_for(redis_url)


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`evo ARGS...` in a subprocess (the package is not installed in CI's first steps)."""
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", "from evo.cli import app; app()", *args], cwd=REPO,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def poll():
    """wait_for(predicate, timeout, what): tests poll state with a deadline, never sleep."""
    return wait_for


@pytest.fixture
def cli():
    return run_cli
