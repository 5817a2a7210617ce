"""Runtime guards, in-process: the dynamic tricks the AST scan cannot see."""
import socket
import threading
import time

import pytest
import torch

from workers.harness.guards import Guard, GuardViolation


@pytest.fixture(scope="module")
def guard():
    return Guard(torch.device("cpu"))


def test_clean_call_passes(guard):
    mode = guard.forbidden_mode(("torch.softmax", "torch.nn.functional.softmax"))
    with guard.watch(mode):
        x = torch.randn(4, 8)
        (x - x.amax(-1, keepdim=True)).exp()


def test_forbidden_op_through_a_module_is_refused(guard):
    mode = guard.forbidden_mode(("torch.nn.functional.softmax",))
    with pytest.raises(GuardViolation, match="torch.nn.functional.softmax"):
        with guard.watch(mode):
            torch.nn.Softmax(dim=-1)(torch.randn(2, 3))


def test_forbidden_op_is_reported_even_if_the_candidate_swallows_the_error(guard):
    mode = guard.forbidden_mode(("torch.softmax",))
    with pytest.raises(GuardViolation, match="torch.softmax"):
        with guard.watch(mode):
            try:
                torch.softmax(torch.randn(2, 3), -1)
            except Exception:
                pass


def test_thread_started_and_joined_inside_the_call_is_caught(guard):
    with pytest.raises(GuardViolation, match="started 1 Python thread"):
        with guard.watch(None):
            t = threading.Thread(target=lambda: None)
            t.start()
            t.join()


def test_patched_timer_is_caught(guard):
    original = time.perf_counter
    try:
        with pytest.raises(GuardViolation, match="time.perf_counter"):
            with guard.watch(None):
                time.perf_counter = lambda: 0.0
    finally:
        time.perf_counter = original
    assert guard.patched() == []


def test_patched_torch_function_is_caught(guard):
    original = torch.allclose
    try:
        with pytest.raises(GuardViolation, match="torch.allclose"):
            with guard.watch(None):
                torch.allclose = lambda *a, **k: True
    finally:
        torch.allclose = original


def test_network_use_is_caught(guard):
    with pytest.raises(GuardViolation, match="socket"):
        with guard.watch(None):
            with socket.socket() as s:
                s.settimeout(0.1)
                try:
                    s.connect(("127.0.0.1", 9))
                except OSError:
                    pass


def test_library_background_thread_is_not_the_candidates(guard):
    """torch.compile's worker pool starts a timer thread from its own reader thread, at any
    moment; a thread started by another thread while the candidate runs is not flagged."""
    started = threading.Event()
    release = threading.Event()

    def library_reader():
        release.wait(5)
        timer = threading.Thread(target=lambda: None)
        timer.start()
        timer.join()
        started.set()

    reader = threading.Thread(target=library_reader)
    reader.start()
    with guard.watch(None):
        release.set()
        assert started.wait(5)
    reader.join()
