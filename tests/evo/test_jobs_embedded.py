"""The embedded default: `evo optimize` with nothing configured starts its own Redis and workers,
stops all of them on SIGTERM (the job stays resumable), and `evo resume` finishes the job."""
import os
import signal
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parents[2]


def processes_with_home(home: Path) -> list[int]:
    """Live processes started for this EVO_HOME (they inherit it in their environment)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().split(")")[-1].split()[0]
            except OSError:
                continue
            if f"EVO_HOME={home}".encode() in environ and state != "Z":
                found.append(int(entry.name))
    return found


def test_optimize_embedded_sigterm_then_resume(tmp_path, poll, cli):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVO_")}
    env.update({"EVO_HOME": str(tmp_path), "EVO_TASK_TIME_LIMIT": "15", "EVO_VISIBILITY_TIMEOUT": "16",
                "EVO_RESTORE_INTERVAL": "1", "PYTHONPATH": str(REPO), "COLUMNS": "200"})
    proc = subprocess.Popen([sys.executable, "-c", "from evo.cli import app; app()", "optimize", "softmax",
                             "--budget", "4", "--samplers", "2"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        db = create_engine(f"sqlite:///{tmp_path / 'evo.db'}")

        def evaluated():
            if not (tmp_path / "evo.db").exists():
                return 0
            with db.connect() as conn:
                try:
                    return conn.scalar(text("SELECT count(*) FROM evaluations WHERE status != 'pending'"))
                except Exception:  # the schema is being created
                    return 0

        poll(evaluated, 90, "the embedded workers to evaluate the seed")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (out, err)
    assert "evo resume 1" in err
    assert processes_with_home(tmp_path) == []  # Redis and every worker stopped
    assert not (tmp_path / "redis.sock").exists()
    with db.connect() as conn:
        assert conn.scalar(text("SELECT state FROM jobs WHERE id = 1")) == "running"

    resumed = cli("resume", "1", env=env, timeout=180)
    assert resumed.returncode == 0, (resumed.stdout, resumed.stderr)
    assert "job 1 done" in resumed.stdout and "leaderboard: softmax" in resumed.stdout
    assert processes_with_home(tmp_path) == []
    with db.connect() as conn:
        assert conn.scalar(text("SELECT state FROM jobs WHERE id = 1")) == "done"
        assert conn.scalar(text("SELECT count(*) FROM job_candidates WHERE job_id = 1")) == 5
        assert conn.scalar(text("SELECT count(*) FROM evaluations WHERE status = 'pending'")) == 0
    db.dispose()
