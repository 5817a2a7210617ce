"""Runtime anti-cheat checks around every candidate call during verification: what a
dynamic trick (one the AST scan cannot see) still cannot hide.

- forbidden ops: a TorchFunctionMode sees every torch-level call the candidate makes;
- patching: the identity of every callable in the modules the harness relies on (time,
  torch, torch.Tensor, torch.cuda, its Event, F, triton, builtins) is recorded before any
  candidate is imported and compared after each call;
- threads: Python threads and the process's native threads are counted before and after;
- streams: the current CUDA stream must be the same before and after.
"""
from __future__ import annotations

import builtins
import importlib
import os
import threading
import time
from contextlib import contextmanager, nullcontext

import torch
from torch.overrides import TorchFunctionMode


class GuardViolation(Exception):
    """A runtime check failed: the candidate is rejected and the process replaced."""


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


class Guard:
    """Built once per evaluation process, before any candidate is imported."""

    def __init__(self, device: torch.device):
        self.device = device
        # Keep the objects themselves (not ids): identity must not be fooled by id reuse.
        self._snapshot = {(label, name): value
                          for label, space in _watched_namespaces().items()
                          for name, value in vars(space).items() if callable(value)}
        self._forbidden_objects: list[object] = []

    def forbidden_mode(self, forbidden: tuple[str, ...]) -> ForbiddenOpsMode:
        table = {}
        for name in forbidden:
            obj = resolve(name)
            if obj is not None:
                self._forbidden_objects.append(obj)  # keeps id() stable
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

    def _threads(self) -> tuple[set[int], int]:
        return {t.ident for t in threading.enumerate()}, len(os.listdir("/proc/self/task"))

    def _stream(self):
        return torch.cuda.current_stream().cuda_stream if self.device.type == "cuda" else None

    @contextmanager
    def watch(self, mode: ForbiddenOpsMode | None, check_native_threads: bool = True):
        """Run candidate code under the runtime checks; raises GuardViolation after it. Without
        a mode (timing: a Python mode would add overhead to every torch call) forbidden ops are
        not watched, the rest is."""
        py_before, native_before = self._threads()
        stream_before = self._stream()
        try:
            with mode if mode is not None else nullcontext():
                yield
        finally:
            problems = []
            if mode is not None and mode.hits:
                problems.append(f"called {', '.join(sorted(set(mode.hits)))}, which this task forbids")
            patched = self.patched()
            if patched:
                problems.append(f"patched {', '.join(patched[:5])} (timers, synchronize and library functions must stay untouched)")
            py_after, native_after = self._threads()
            if py_after - py_before:
                problems.append(f"started {len(py_after - py_before)} Python thread(s); a candidate must not start threads")
            elif check_native_threads and native_after > native_before:
                problems.append(f"started {native_after - native_before} native thread(s); a candidate must not start threads")
            if self._stream() != stream_before:
                problems.append("changed the current CUDA stream; launch on torch.cuda.current_stream() only")
            if problems:
                raise GuardViolation("; ".join(problems))
