"""Runtime anti-cheat checks around every candidate call during verification: what a
dynamic trick (one the AST scan cannot see) still cannot hide.

- forbidden ops: a TorchFunctionMode sees every torch-level call the candidate makes;
- patching: the identity of every callable in the modules the harness relies on (time,
  torch, torch.Tensor, torch.cuda, its Event, F, triton, builtins) is recorded before any
  candidate is imported and compared after each call;
- threads: every Python thread start made from the thread running the candidate is counted
  (also one joined before the call returns; library background threads, such as the timer
  torch.compile's worker pool starts from its reader thread, are not the candidate's), and
  on the CPU the process's native threads are counted before and after;
- processes and network: an audit hook (sys.addaudithook) records socket use, os.system,
  fork and kill while candidate code runs;
- streams: the current CUDA stream must be the same before and after.
"""
from __future__ import annotations

import _thread
import builtins
import importlib
import os
import sys
import threading
import time
from contextlib import contextmanager, nullcontext

import torch
from torch.overrides import TorchFunctionMode


class GuardViolation(Exception):
    """A runtime check failed: the candidate is rejected. `restart` when the process's state
    may be altered (patched functions, threads, processes), so it must be replaced."""

    def __init__(self, message: str, restart: bool = False):
        super().__init__(message)
        self.restart = restart


def resolve(dotted: str):
    """The object a dotted name such as "torch.nn.functional.softmax" stands for, or None."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


class ForbiddenOpsMode(TorchFunctionMode):
    """Records (and refuses) calls of the task's forbidden torch functions."""

    def __init__(self, forbidden: dict[int, str]):
        super().__init__()
        self.forbidden = forbidden
        self.hits: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = self.forbidden.get(id(func))
        if name is not None:
            self.hits.append(name)
            raise GuardViolation(f"called {name}, which this task forbids")
        return func(*args, **(kwargs or {}))


def _watched_namespaces() -> dict[str, object]:
    spaces = {"builtins": builtins, "time": time, "torch": torch, "torch.Tensor": torch.Tensor,
              "torch._C.TensorBase": torch._C.TensorBase, "torch.nn.functional": torch.nn.functional,
              "torch.cuda": torch.cuda, "torch.cuda.Event": torch.cuda.Event}
    for name in ("triton", "triton.testing", "triton.language"):
        try:
            spaces[name] = importlib.import_module(name)
        except ImportError:
            pass
    return spaces


# Audit events a kernel launcher has no business raising. (Not "open", "subprocess.Popen" or
# "os.posix_spawn": Triton's own compiler reads its cache and runs ptxas during a candidate's
# calls, through posix_spawn on Python 3.12.)
_AUDITED = ("socket.", "os.system", "os.fork", "os.forkpty", "os.kill", "os.killpg", "os.exec", "os.spawn",
            "pty.spawn", "urllib.Request")


class Guard:
    """Built once per evaluation process, before any candidate is imported."""

    def __init__(self, device: torch.device):
        self.device = device
        self._active = False
        self._watched_thread: int | None = None  # ident of the thread running candidate code
        self._events: list[str] = []
        self.threads_started = 0
        self._count_thread_starts()
        sys.addaudithook(self._audit)
        self.refresh()
        self._forbidden_objects: dict[str, object] = {}  # kept alive, so their id()s stay unique

    def refresh(self) -> None:
        """Record the callables as they are now. Called at start-up and after the harness's own
        baseline code ran (torch.compile replaces torch.manual_seed on first use), never while
        unchecked candidate code could have run. Keeps the objects themselves, not ids, so
        identity cannot be fooled by id reuse."""
        self._snapshot = {(label, name): value
                          for label, space in _watched_namespaces().items()
                          for name, value in vars(space).items() if callable(value)}

    def _count_thread_starts(self) -> None:
        """Wrap the primitives every Python thread start goes through (names differ by version)."""
        for module in (threading, _thread):
            for name in ("_start_new_thread", "start_new_thread", "_start_joinable_thread", "start_joinable_thread"):
                original = getattr(module, name, None)
                if original is None:
                    continue

                def counting(*args, _original=original, **kwargs):
                    if self._on_watched_thread():
                        self.threads_started += 1
                    return _original(*args, **kwargs)

                setattr(module, name, counting)

    def _on_watched_thread(self) -> bool:
        return self._active and threading.get_ident() == self._watched_thread

    def _audit(self, event: str, args) -> None:
        if event.startswith(_AUDITED) and self._on_watched_thread():
            self._events.append(event)

    def forbidden_mode(self, forbidden: tuple[str, ...]) -> ForbiddenOpsMode:
        table = {}
        for name in forbidden:
            if name not in self._forbidden_objects:
                self._forbidden_objects[name] = resolve(name)
            obj = self._forbidden_objects[name]
            if obj is not None:
                table[id(obj)] = name
        return ForbiddenOpsMode(table)

    def patched(self) -> list[str]:
        """Callables that were replaced or deleted since the process started."""
        spaces = _watched_namespaces()
        changed = []
        for (label, name), value in self._snapshot.items():
            if vars(spaces[label]).get(name) is not value:
                changed.append(f"{label}.{name}")
        return changed

    def _native_threads(self) -> int:
        return len(os.listdir("/proc/self/task"))

    def _stream(self):
        return torch.cuda.current_stream().cuda_stream if self.device.type == "cuda" else None

    @contextmanager
    def watch(self, mode: ForbiddenOpsMode | None):
        """Run candidate code under the runtime checks; raises GuardViolation after it. Without
        a mode (timing: a Python mode would add overhead to every torch call) forbidden ops are
        not watched, the rest is. Native threads are counted on the CPU only: on a GPU the CUDA
        driver, NVRTC and Triton's compiler create their own on first use, and a candidate has
        no way to start one there without ctypes or a C extension, which the scan refuses."""
        check_native_threads = self.device.type == "cpu"
        native_before = self._native_threads()
        stream_before = self._stream()
        started_before = self.threads_started
        self._events.clear()
        self._watched_thread = threading.get_ident()
        self._active = True
        try:
            with mode if mode is not None else nullcontext():
                yield
        finally:
            self._active = False
            tampering = []  # what may have altered the process: it gets replaced
            if self._events:
                tampering.append(f"used {', '.join(sorted(set(self._events)))}: no processes, signals or network")
            patched = self.patched()
            if patched:
                tampering.append(f"patched {', '.join(patched[:5])} (timers, synchronize and library functions must stay untouched)")
            native_after = self._native_threads()
            if self.threads_started > started_before:
                tampering.append(f"started {self.threads_started - started_before} Python thread(s); "
                                 "a candidate must not start threads")
            elif check_native_threads and native_after > native_before:
                tampering.append(f"started {native_after - native_before} native thread(s); a candidate must not start threads")
            if self._stream() != stream_before:
                tampering.append("changed the current CUDA stream; launch on torch.cuda.current_stream() only")
            forbidden = [f"called {', '.join(sorted(set(mode.hits)))}, which this task forbids"] if mode is not None and mode.hits else []
            if forbidden or tampering:
                raise GuardViolation("; ".join(forbidden + tampering), restart=bool(tampering))
