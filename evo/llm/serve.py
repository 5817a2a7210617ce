"""`evo llm serve MODEL`: a local vLLM OpenAI-compatible server, started and waited for.

Flags: `--generation-config vllm` so the model's generation_config.json does not override
the sampling parameters evo sends; prefix caching on (evo's prompts put the stable part
first, so the task context is computed once per job); a fixed seed for reproducible
sampling; one tensor-parallel rank per visible GPU unless told otherwise.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx


class ServeError(RuntimeError):
    pass


def vllm_command(model: str, *, host: str = "127.0.0.1", port: int = 8000, tensor_parallel: int = 1,
                 max_model_len: int | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    exe = shutil.which("vllm")
    if exe is None:
        raise ServeError("vllm is not installed here (no `vllm` on PATH): `pip install vllm` on a GPU machine, "
                         "or point EVO_LLM_BASE_URL at a running OpenAI-compatible server")
    cmd = [exe, "serve", model, "--host", host, "--port", str(port), "--served-model-name", model,
           "--generation-config", "vllm", "--enable-prefix-caching", "--seed", "0",
           "--tensor-parallel-size", str(tensor_parallel)]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    return cmd + list(extra)


def wait_ready(base_url: str, model: str, process: subprocess.Popen, timeout_s: float, log: Path | None = None) -> None:
    """Poll GET /models until the server lists `model`; fail early if the process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log and log.exists() else ""
            raise ServeError(f"vllm exited with status {process.returncode} before it was ready\n{tail}".rstrip())
        try:
            models = httpx.get(f"{base_url}/models", timeout=2.0).json().get("data", [])
            if any(m.get("id") == model for m in models):
                return
        except (httpx.HTTPError, ValueError):
            pass  # not listening yet
        time.sleep(0.5)  # polling interval of a readiness check, not a wait for a result
    raise ServeError(f"vllm did not list {model!r} at {base_url}/models within {timeout_s:.0f} s")


def start(model: str, *, host: str = "127.0.0.1", port: int = 8000, tensor_parallel: int = 1,
          max_model_len: int | None = None, extra: tuple[str, ...] = (), log: Path, timeout_s: float = 1800.0
          ) -> tuple[subprocess.Popen, str]:
    """Start vLLM (output to `log`), wait until it serves `model`; returns the process and its base URL."""
    cmd = vllm_command(model, host=host, port=port, tensor_parallel=tensor_parallel, max_model_len=max_model_len,
                       extra=extra)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://{host}:{port}/v1"
    try:
        wait_ready(base_url, model, process, timeout_s, log)
    except BaseException:
        stop(process)
        raise
    return process, base_url


def stop(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
