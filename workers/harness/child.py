"""The evaluation process's main loop (started by workers/sandbox.py, never imported by it).

    python -m workers.harness.child --requests FD --results FD --device cpu|cuda --parent PID

Reads one request at a time from its private pipe, reports each phase as it starts (the
supervisor enforces the per-phase deadlines), and answers with the EvalResult. stdout and
stderr go to a log file, so nothing the candidate prints can reach the result channel."""
from __future__ import annotations

import argparse
import faulthandler
import os
import resource
import signal
import sys

GPU_MEMORY_FRACTION = 0.9  # of the GPU's memory; the harness's own buffers live inside it too
CPU_MEMORY_HEADROOM = 4 << 30  # bytes of address space beyond what the process holds after start-up


def _cap_cpu_memory() -> None:
    with open("/proc/self/status") as f:
        vm_size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm_size + CPU_MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the supervisor dies (even by SIGKILL): an orphaned evaluation
    would otherwise keep spinning on a candidate's endless loop. Linux only."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--results", type=int, required=True)
    parser.add_argument("--device", choices=("cpu", "cuda"), required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    faulthandler.enable()  # a segfault leaves a Python traceback in the log for the error text

    import torch

    from baselines import UnknownTaskError
    from workers.harness.channel import ChannelClosed, receive, send
    from workers.harness.pipeline import Harness

    if args.device == "cuda":
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
        torch.cuda.set_per_process_memory_fraction(GPU_MEMORY_FRACTION, device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)
    harness = Harness(device)
    if args.device == "cpu":
        _cap_cpu_memory()  # RLIMIT_AS breaks CUDA's large virtual reservations: CPU only
    send(args.results, {"ready": harness.environment})

    while True:
        try:
            request = receive(args.requests)
        except ChannelClosed:
            return 0
        if request.get("exit"):
            return 0
        nonce = request["nonce"]
        phase = lambda name: send(args.results, {"phase": name, "nonce": nonce})  # noqa: E731
        try:
            result, restart = harness.evaluate(request["task"], request["source"], request["language"],
                                               request["time_it"], phase, request.get("compile_timeout", 60.0))
        except UnknownTaskError as e:
            send(args.results, {"bad_request": str(e), "nonce": nonce})
            continue
        sys.stdout.flush()
        send(args.results, {"result": result.model_dump(mode="json"), "restart": restart, "nonce": nonce})
        if restart:
            return 0


if __name__ == "__main__":
    sys.exit(main())
