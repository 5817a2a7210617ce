"""The supervisor of the evaluation process: spawns it, feeds it candidates over a private
pipe, enforces a hard deadline per phase, and replaces it after a timeout, a crash, a
fatal CUDA error or tampering.

The caller's process never imports torch from here and never touches CUDA: the Celery
parent can fork safely. The evaluation process is a fresh interpreter (spawned, not
forked) in its own session (so its whole process group can be killed), with a clean
environment (no API keys or tokens) and CUDA_VISIBLE_DEVICES narrowed to its one GPU.
"""
from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from workers.devices import physical_device
from workers.harness.channel import ChannelClosed, receive, send
from workers.protocol import CPU_DEVICE, EvalResult

REPO_ROOT = Path(__file__).resolve().parent.parent
LANGUAGES = ("triton", "cuda")
MAX_EVALUATIONS_PER_PROCESS = 500  # bounds what imported candidates and JIT caches leak

# Environment variables the evaluation process inherits: what Python, CUDA, Triton and the
# compilers need. Anything else (API keys, tokens, database URLs) stays behind.
_ENV_KEEP = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "LD_LIBRARY_PATH",
             "CUDA_HOME", "CUDA_PATH", "CUDA_ROOT", "CUDA_MODULE_LOADING", "CC", "CXX", "XDG_CACHE_HOME",
             "PYTHONPATH", "PYTHONHASHSEED", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"}
_ENV_KEEP_PREFIXES = ("TRITON_", "TORCHINDUCTOR_", "CUPY_")
_ENV_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL", "AUTH")


_PHASES = {"compile": "importing the module and its first call, where Triton/NVRTC compile",
           "verify": "the verification calls at the check shapes",
           "baselines": "timing eager, torch.compile and the seed: a harness problem, not the candidate's",
           "time": "timing the candidate at the benchmark shapes"}


@dataclass(frozen=True)
class Timeouts:
    """Hard limits in seconds, per phase of one evaluation (start: spawning the process)."""

    start: float = 180.0
    compile: float = 120.0
    verify: float = 120.0
    baselines: float = 900.0  # eager, torch.compile and seed timings: once per task/shape per process
    time: float = 300.0

    def of(self, phase: str) -> float:
        return getattr(self, phase)


def clean_environment(gpu: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if (k in _ENV_KEEP or k.startswith(_ENV_KEEP_PREFIXES)) and not any(w in k.upper() for w in _ENV_SECRET_WORDS)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    if gpu is None:
        env["TRITON_INTERPRET"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        env.pop("TRITON_INTERPRET", None)
        env["CUDA_VISIBLE_DEVICES"] = physical_device(gpu)
    return env


class EvaluatorStartError(RuntimeError):
    """The evaluation process did not come up (an environment problem, not a candidate's)."""


class _Process:
    """One running evaluation process and its pipes. Spawning returns at once; `wait_ready`
    waits for the process's ready message (torch imported, CUDA context made)."""

    def __init__(self, gpu: int | None):
        self.spawned_at = time.monotonic()
        req_r, self.req_w = os.pipe()
        self.res_r, res_w = os.pipe()
        self.log_path = Path(tempfile.mkstemp(prefix="evo-eval-", suffix=".log")[1])
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "workers.harness.child", "--requests", str(req_r), "--results", str(res_w),
                 "--device", "cpu" if gpu is None else "cuda", "--parent", str(os.getpid())],
                pass_fds=(req_r, res_w), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=clean_environment(gpu), cwd=REPO_ROOT)
        os.close(req_r)
        os.close(res_w)
        self._finalizer = weakref.finalize(self, _kill, self.proc, self.req_w, self.res_r, self.log_path)
        self.environment: dict[str, str] | None = None  # set by the ready message
        self.evaluations = 0

    def wait_ready(self, start_timeout: float) -> None:
        """Wait until the process is ready, at most `start_timeout` seconds after it was spawned."""
        if self.environment is not None:
            return
        left = max(0.0, start_timeout - (time.monotonic() - self.spawned_at))
        try:
            ready = receive(self.res_r, timeout=left)
        except ChannelClosed:
            ready = None
        if ready is None or "ready" not in ready:
            tail = self.log_tail()
            self.kill()
            raise EvaluatorStartError(f"the evaluation process did not start within {start_timeout:.0f} s:\n{tail}")
        self.environment = ready["ready"]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self) -> None:
        self._finalizer()

    def stop(self, grace: float = 5.0) -> None:
        """Ask politely, then kill the whole process group."""
        if self.alive():
            try:
                send(self.req_w, {"exit": True})
                self.proc.wait(timeout=grace)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


def _kill(proc: subprocess.Popen, req_w: int, res_r: int, log_path: Path) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group: anything the candidate spawned dies too
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    for fd in (req_w, res_r):
        try:
            os.close(fd)
        except OSError:
            pass
    log_path.unlink(missing_ok=True)


class Evaluator:
    """One spawned evaluation process for one device (GPU index or CPU interpreter);
    restarted after a timeout or a fatal CUDA error. Not thread-safe: one per worker."""

    def __init__(self, gpu: int | None = None, timeouts: Timeouts | None = None):
        self.gpu = gpu
        self.timeouts = timeouts or Timeouts()
        self._process: _Process | None = None

    @property
    def pid(self) -> int | None:
        """The evaluation process's pid, None while none runs (it starts on first use)."""
        return self._process.proc.pid if self._process is not None and self._process.alive() else None

    @property
    def device(self) -> str:
        if self._process is not None and self._process.environment is not None:
            return self._process.environment.get("device", CPU_DEVICE)
        return CPU_DEVICE if self.gpu is None else f"cuda:{self.gpu}"

    def start(self) -> None:
        """Spawn the evaluation process now, if none runs, and return without waiting: it imports
        torch and makes its CUDA context while the caller goes on, so the first `evaluate` does
        not pay the 3-9 s start (a Celery GPU worker calls this when its pool process starts)."""
        if self._process is None or not self._process.alive():
            self._process = _Process(self.gpu)

    def evaluate(self, task: str, source: str, language: str = "triton", *, time_it: bool = True) -> EvalResult:
        """Compile, check, verify and (unless time_it=False) time one candidate. Raises
        ValueError for bad input (unknown task or language); everything the candidate does
        ends in an EvalResult."""
        if language not in LANGUAGES:
            raise ValueError(f"unknown language {language!r}; expected one of {', '.join(LANGUAGES)}")
        started = {}
        self.start()
        process = self._process
        if process.environment is None:  # the first evaluation of this process: wait for its start
            t0 = time.monotonic()
            process.wait_ready(self.timeouts.start)
            started["start"] = time.monotonic() - t0  # ~0 after a warm start (Evaluator.start)
        nonce = secrets.token_hex(16)
        request = {"nonce": nonce, "task": task, "source": source, "language": language, "time_it": time_it,
                   "compile_timeout": self.timeouts.compile}
        phase, used, phase_start = "compile", {}, time.monotonic()
        try:
            send(process.req_w, request)
            while True:
                left = self.timeouts.of(phase) - used.get(phase, 0.0) - (time.monotonic() - phase_start)
                message = receive(process.res_r, timeout=max(left, 0.0))
                if message is None:
                    return self._timed_out(phase, started)
                if message.get("nonce") != nonce:
                    return self._tampered(started)
                if "phase" in message:
                    now = time.monotonic()
                    used[phase] = used.get(phase, 0.0) + now - phase_start
                    phase, phase_start = message["phase"], now
                    continue
                if "bad_request" in message:
                    raise ValueError(message["bad_request"])
                result = EvalResult.model_validate(message["result"])
                result.phases.update(started)
                process.evaluations += 1
                if message.get("restart") or process.evaluations >= MAX_EVALUATIONS_PER_PROCESS:
                    self._replace()
                return result
        except (ChannelClosed, BrokenPipeError):
            return self._crashed(phase, started)

    def _replace(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def _result(self, status: str, error: str, started: dict) -> EvalResult:
        env = (self._process.environment if self._process else None) or {}
        return EvalResult(status=status, error=error, device=self.device, environment=env, phases=dict(started))

    def _timed_out(self, phase: str, started: dict) -> EvalResult:
        result = self._result("timeout", (
            f"the {phase} phase ({_PHASES[phase]}) exceeded its hard limit of {self.timeouts.of(phase):.0f} s and "
            f"the evaluation process was killed. Look for a loop that never ends, a grid or loop bound computed "
            f"wrongly, or programs waiting on each other."), started)
        self._process.kill()
        self._process = None
        return result

    def _crashed(self, phase: str, started: dict) -> EvalResult:
        process = self._process
        try:
            code = process.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        tail = process.log_tail()
        process.kill()
        self._process = None
        if code is not None and code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with status {code}"
        return self._result("runtime_error", f"the evaluation process {how} during {phase} "
                            f"(a crash in the candidate's code, e.g. an out-of-bounds access)."
                            f"{_crash_details(tail)}", started)

    def _tampered(self, started: dict) -> EvalResult:
        result = self._result("rejected", "something other than the harness wrote to the result channel", started)
        self._process.kill()
        self._process = None
        return result

    def close(self) -> None:
        self._replace()

    def __enter__(self) -> "Evaluator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _crash_details(log_tail: str) -> str:
    """faulthandler's report, reduced to the fatal line and the candidate's frames."""
    lines = log_tail.splitlines()
    keep = [re.sub(r'"[^"]*evo_candidate_\d+\.py"', '"candidate.py"', line.strip()) for line in lines
            if line.startswith("Fatal Python error") or "evo_candidate_" in line]
    return ("\n" + "\n".join(keep[:8])) if keep else ""


def evaluate_once(task: str, source: str, language: str = "triton", *, gpu: int | None = None,
                  timeouts: Timeouts | None = None, time_it: bool = True) -> EvalResult:
    """Start an evaluation process, evaluate one candidate, stop the process."""
    with Evaluator(gpu, timeouts) as evaluator:
        return evaluator.evaluate(task, source, language, time_it=time_it)
