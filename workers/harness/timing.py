"""Timing. On the GPU, two passes over rotated input sets after a warm-up past JIT:
  1. the timed pass: L2 flushed (256 MB written), then CUDA events around the call with no
     synchronize between the flush and the call, so the host's launch latency hides behind
     the flush (as triton's do_bench does) and the events measure the GPU's work, not how
     busy the host is; adaptive number of trials (stop when the median is stable or at a
     time cap).
  2. the wall pass: synchronize, call, synchronize, a few times, host wall time beside the
     events of the same calls. The events see only the current stream, the host waits for
     all of them: work on a side stream shows up as wall time the events did not see. It
     needs a pass of its own because in the timed pass such work would overlap the flush.
On the CPU interpreter: host wall time only, few trials, labeled as such."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

L2_FLUSH_BYTES = 256 * 1024 * 1024


@dataclass
class Measurement:
    times_ms: list[float]  # one per trial of the timed pass (event time on GPU, wall time on CPU)
    wall_ms: list[float]  # host wall time per call in the wall pass
    wall_event_ms: list[float]  # event time of the same calls
    outputs: list  # the last output produced on each input set, for the re-check

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def wall_median(self) -> float:
        return statistics.median(self.wall_ms)

    @property
    def wall_event_median(self) -> float:
        return statistics.median(self.wall_event_ms)

    @property
    def spread(self) -> float:
        """(p80 - p20) / median."""
        if len(self.times_ms) < 2:
            return 0.0
        q = statistics.quantiles(self.times_ms, n=10, method="inclusive")
        return (q[7] - q[1]) / self.median if self.median > 0 else 0.0


@dataclass(frozen=True)
class TrialPolicy:
    warmup: int = 2  # calls per input set before timing (JIT compile, autotune, caches)
    min_trials: int = 10
    max_trials: int = 100
    time_cap_s: float = 0.4  # per measurement, after warm-up
    stable_rel: float = 0.01  # stop when the median of all trials and of the last half agree this well
    wall_trials: int = 6  # calls of the wall pass (GPU only)


GPU_POLICY = TrialPolicy()
CPU_POLICY = TrialPolicy(warmup=1, min_trials=3, max_trials=5, time_cap_s=2.0)


def _stable(times: list[float], policy: TrialPolicy) -> bool:
    if len(times) < policy.min_trials:
        return False
    full, recent = statistics.median(times), statistics.median(times[len(times) // 2:])
    return abs(full - recent) <= policy.stable_rel * full


class GpuTimer:
    def __init__(self, device: torch.device, policy: TrialPolicy = GPU_POLICY):
        self.device, self.policy = device, policy
        self._flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def measure(self, fn: Callable, input_sets: Sequence[tuple]) -> Measurement:
        sync, perf = torch.cuda.synchronize, time.perf_counter
        outputs: list = [None] * len(input_sets)
        for _ in range(self.policy.warmup):
            for k, inputs in enumerate(input_sets):
                outputs[k] = fn(*inputs)
        sync()
        times: list[float] = []
        deadline = perf() + self.policy.time_cap_s
        while len(times) < self.policy.max_trials:
            k = len(times) % len(input_sets)
            self.flush_l2()  # queued: the GPU flushes while the host launches the call
            outputs[k] = self._events_around(fn, input_sets[k])
            sync()
            times.append(self._start.elapsed_time(self._end))
            if len(times) >= self.policy.min_trials and (perf() > deadline or (
                    len(times) % len(input_sets) == 0 and _stable(times, self.policy))):
                break
        walls, wall_events = [], []
        for trial in range(self.policy.wall_trials):
            k = trial % len(input_sets)
            sync()
            t0 = perf()
            outputs[k] = self._events_around(fn, input_sets[k])
            sync()  # device-wide: waits for work on any stream, which the events would not see
            walls.append((perf() - t0) * 1e3)
            wall_events.append(self._start.elapsed_time(self._end))
        return Measurement(times, walls, wall_events, outputs)

    def flush_l2(self) -> None:
        self._flush.zero_()

    def _events_around(self, fn: Callable, inputs: tuple):
        self._start.record()
        out = fn(*inputs)
        self._end.record()
        return out


class CpuTimer:
    """Wall-clock timing of the CPU interpreter: meaningful only relative to other CPU runs."""

    def __init__(self, policy: TrialPolicy = CPU_POLICY):
        self.policy = policy

    def measure(self, fn: Callable, input_sets: Sequence[tuple]) -> Measurement:
        outputs: list = [None] * len(input_sets)
        for _ in range(self.policy.warmup):
            for k, inputs in enumerate(input_sets):
                outputs[k] = fn(*inputs)
        times = []
        deadline = time.perf_counter() + self.policy.time_cap_s
        while len(times) < self.policy.max_trials:
            k = len(times) % len(input_sets)
            t0 = time.perf_counter()
            outputs[k] = fn(*input_sets[k])
            times.append((time.perf_counter() - t0) * 1e3)
            if len(times) >= self.policy.min_trials and (_stable(times, self.policy) or time.perf_counter() > deadline):
                break
        return Measurement(times, list(times), list(times), outputs)


def side_stream_suspected(m: Measurement) -> bool:
    """Host wall time far above the event time of the same calls (the wall pass) means work ran
    where the events could not see it. The allowance covers the synchronize round trip and
    event-record overhead (tens of microseconds)."""
    return m.wall_median - m.wall_event_median > max(0.05, 0.5 * m.wall_event_median)


def geomean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None and v > 0]
    if not values:
        return None
    return statistics.geometric_mean(values)
