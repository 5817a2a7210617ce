"""What devices this host has, asked without initializing CUDA in the caller's process,
and the measured hardware ceilings used for speed-of-light bounds (the one place for them).

The Celery parent and the CLI call these; CUDA itself only ever lives in the spawned
evaluation process (workers/sandbox.py)."""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache

from workers.protocol import CPU_DEVICE


@dataclass(frozen=True)
class Ceilings:
    """Peak rates a kernel cannot beat: bytes/s of HBM bandwidth, FLOP/s per dtype name."""

    bandwidth: float
    flops: dict[str, float]


# H200 (SXM, 141 GB HBM3e). Bandwidth: measured copy of 2 GiB at ~4.3 TB/s read+write
# (field-notes.md); the spec sheet says 4.8 TB/s, so SOL_SLACK below covers the gap.
# FLOP/s: dense tensor-core peaks (bf16/fp16 ~790 TFLOP/s as measured for matmul; tf32 for
# fp32, the fastest an fp32 candidate can go if it chooses tf32 math).
CEILINGS = {
    "H200": Ceilings(bandwidth=4.3e12, flops={"bfloat16": 790e12, "float16": 790e12, "float32": 495e12}),
}

# A candidate may beat the measured ceilings by this factor before it is called impossible:
# the bandwidth ceiling is measured (4.3 TB/s) while the spec is 4.8 TB/s (ratio 1.12).
SOL_SLACK = 1.15


def ceilings_for(device_name: str) -> Ceilings | None:
    for key, ceil in CEILINGS.items():
        if key in device_name:
            return ceil
    return None


def speed_of_light_ms(flops: float, nbytes: float, dtype_name: str, device_name: str) -> float | None:
    """max(flops / peak, bytes / bandwidth) in ms, or None on a device without known ceilings."""
    ceil = ceilings_for(device_name)
    if ceil is None:
        return None
    peak = ceil.flops.get(dtype_name, max(ceil.flops.values()))
    return max(flops / peak, nbytes / ceil.bandwidth) * 1e3


def _visible_devices() -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as a list, or None when unset (all GPUs visible)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [d.strip() for d in value.split(",") if d.strip() and d.strip() != "-1"]


@lru_cache(maxsize=1)
def _nvidia_smi_gpus() -> tuple[tuple[str, str, str], ...]:
    """(index, uuid, name) per physical GPU, from nvidia-smi; empty when there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    try:
        out = subprocess.run([exe, "--query-gpu=index,uuid,name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return ()
    return tuple(tuple(field.strip() for field in line.split(",", 2)) for line in out.splitlines() if line.strip())


def gpu_count() -> int:
    """GPUs this process may use: nvidia-smi's list, narrowed by CUDA_VISIBLE_DEVICES."""
    gpus = _nvidia_smi_gpus()
    visible = _visible_devices()
    if visible is None:
        return len(gpus)
    return sum(1 for d in visible if any(d in (idx, uuid) for idx, uuid, _ in gpus))


def physical_device(gpu: int) -> str:
    """The CUDA_VISIBLE_DEVICES entry that makes logical GPU `gpu` the only one a child sees."""
    visible = _visible_devices()
    if visible is None:
        return str(gpu)
    if not 0 <= gpu < len(visible):
        raise ValueError(f"GPU {gpu} is not visible (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r})")
    return visible[gpu]


def device_label(gpu: int | None = None) -> str:
    """The GPU's name (e.g. "NVIDIA H200") for logical index `gpu`, or CPU_DEVICE for None."""
    if gpu is None:
        return CPU_DEVICE
    wanted = physical_device(gpu)
    for idx, uuid, name in _nvidia_smi_gpus():
        if wanted in (idx, uuid):
            return name
    raise ValueError(f"no GPU {gpu} on this host (nvidia-smi lists {len(_nvidia_smi_gpus())})")
