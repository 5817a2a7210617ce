"""The supervisor's promises that need no candidate: no torch in the caller, a clean
environment for the child, device discovery without CUDA, the timing verdict rules."""
import subprocess
import sys
from pathlib import Path

import pytest

from workers import devices
from workers.harness.timing import Measurement, side_stream_suspected
from workers.sandbox import clean_environment

REPO = Path(__file__).resolve().parents[2]


def test_supervisor_imports_neither_torch_nor_cuda():
    code = ("import sys; import workers.sandbox, workers.devices; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'triton', 'cupy')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_child_environment_has_no_secrets(monkeypatch):
    monkeypatch.setenv("EVO_LLM_API_KEY", "sk-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("EVO_API_TOKEN", "t")
    monkeypatch.setenv("EVO_DATABASE_URL", "postgresql://u:p@h/db")
    monkeypatch.setenv("TRITON_CACHE_DIR", "/tmp/triton-cache")
    env = clean_environment(None)
    assert "sk-secret" not in env.values() and "t" not in env.values()
    assert not any(k.startswith("EVO_") for k in env)
    assert env["TRITON_INTERPRET"] == "1" and env["TRITON_CACHE_DIR"] == "/tmp/triton-cache"
    assert env["PYTHONPATH"].split(":")[0] == str(REPO)


def test_child_gets_exactly_its_gpu(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    env = clean_environment(1)
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and "TRITON_INTERPRET" not in env
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert clean_environment(1)["CUDA_VISIBLE_DEVICES"] == "6"
    with pytest.raises(ValueError, match="not visible"):
        clean_environment(2)


def test_gpu_count_follows_nvidia_smi_and_visible_devices(monkeypatch):
    gpus = (("0", "GPU-a", "NVIDIA H200"), ("1", "GPU-b", "NVIDIA H200"))
    monkeypatch.setattr(devices, "_nvidia_smi_gpus", lambda: gpus)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert devices.gpu_count() == 2
    assert devices.device_label(1) == "NVIDIA H200" and devices.device_label(None) == "cpu-interpreter"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-b")
    assert devices.gpu_count() == 1 and devices.device_label(0) == "NVIDIA H200"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.gpu_count() == 0
    monkeypatch.setattr(devices, "_nvidia_smi_gpus", lambda: ())
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert devices.gpu_count() == 0


def test_speed_of_light_uses_the_slower_of_compute_and_memory():
    # 1 GB at 4.3 TB/s = 0.2326 ms; 1 TFLOP at 790 TFLOP/s = 1.266 ms.
    assert devices.speed_of_light_ms(0, 1e9, "bfloat16", "NVIDIA H200") == pytest.approx(1e9 / 4.3e12 * 1e3)
    assert devices.speed_of_light_ms(1e12, 1e9, "bfloat16", "NVIDIA H200") == pytest.approx(1e12 / 790e12 * 1e3)
    assert devices.speed_of_light_ms(1e12, 1e9, "bfloat16", "cpu-interpreter") is None


def test_side_stream_rule_compares_wall_and_events_of_the_same_calls():
    def measured(timed, wall, wall_events):
        return Measurement(times_ms=[timed] * 10, wall_ms=[wall] * 6, wall_event_ms=[wall_events] * 6, outputs=[])

    honest = measured(0.100, 0.125, 0.110)
    # host launch latency shows in the wall pass's events as well as its wall time
    launch_bound = measured(0.030, 0.140, 0.120)
    hidden = measured(0.010, 0.110, 0.012)
    long_honest = measured(2.0, 2.04, 2.01)
    long_hidden = measured(2.0, 4.1, 2.0)
    assert not any(map(side_stream_suspected, (honest, launch_bound, long_honest)))
    assert side_stream_suspected(hidden) and side_stream_suspected(long_hidden)


def test_evaluation_process_dies_with_a_killed_supervisor(poll):
    """A SIGKILLed worker must not leave its evaluation process spinning on an endless loop."""
    import os
    import signal
    code = ("from workers.sandbox import Evaluator, Timeouts\n"
            "ev = Evaluator(timeouts=Timeouts(compile=300))\n"
            "ev.evaluate('softmax', open('kernels/softmax.py').read(), time_it=False)\n"
            "print(ev.pid, flush=True)\n"
            "ev.evaluate('softmax', open('tests/workers/fixtures/infinite_loop.py').read())\n")
    supervisor = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    child = int(supervisor.stdout.readline())
    os.kill(supervisor.pid, signal.SIGKILL)
    supervisor.wait()

    def gone():
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return False

    try:
        poll(gone, 10, "the evaluation process to die with its supervisor")
    finally:
        if not gone():
            os.kill(child, signal.SIGKILL)
