"""One candidate through compile -> static checks -> verify -> time, inside the evaluation
process. `Harness.evaluate` never raises for anything the candidate does: every outcome
is an EvalResult with an error text written for the LLM."""
from __future__ import annotations

import gc
import platform
import secrets
import shutil
import subprocess
import tempfile
import time
from importlib import import_module
from pathlib import Path
from typing import Callable

import torch
import triton
import triton.language as tl

from baselines import get_task
from baselines.task import Task
from workers.devices import SOL_SLACK, speed_of_light_ms
from workers.harness import static_checks
from workers.harness.compile import (CandidateCompileError, candidate_traceback, extract_cuda_source,
                                     is_compile_exception, load_module, nvcc_compile_only, nvcc_version,
                                     unload_module)
from workers.harness.guards import ForbiddenOpsMode, Guard, GuardViolation
from workers.harness.timing import CpuTimer, GpuTimer, Measurement, geomean, side_stream_suspected
from workers.harness.verify import (DegenerateReference, bytes_of, clone_inputs, compare, inputs_unchanged,
                                    poison_cuda_cache, tensors, tolerance_for)
from workers.protocol import CPU_DEVICE, EvalResult, ShapeTiming

FIXED_SEEDS = (0, 1)  # plus one secret seed drawn per evaluation
TIMING_INPUT_SETS = 3  # rotated during timing so no single input stays warm
CPU_DTYPES = (torch.float32, torch.float16)  # the interpreter is wrong for bf16
OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "cannot allocate memory", "std::bad_alloc")
FATAL_CUDA = ("illegal memory access", "unspecified launch failure", "device-side assert", "CUDA error",
              "misaligned address", "illegal instruction", "an illegal", "cudaErrorLaunchFailure")


class Verdict(Exception):
    """Ends an evaluation early with a status; `restart` asks for a fresh process."""

    def __init__(self, status: str, error: str, restart: bool = False):
        super().__init__(error)
        self.status, self.error, self.restart = status, error, restart


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@triton.jit
def _warmup_kernel(x_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, tl.load(x_ptr + offs) + 1.0)


def warm_up_runtimes(device: torch.device) -> None:
    """Compile and launch one tiny Triton kernel (and a CuPy kernel when CuPy is there) before
    any candidate: the threads and caches these runtimes create lazily then exist already, so
    the thread check sees only what a candidate starts."""
    x = torch.zeros(64, device=device)
    _warmup_kernel[(1,)](x, BLOCK=64)
    if device.type == "cuda":
        try:  # optional: without a working CuPy, CUDA candidates fail with their own error
            cupy = import_module("cupy")
            with cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream):
                kernel = cupy.RawKernel(r'extern "C" __global__ void add_one(float* x) { x[threadIdx.x] += 1.0f; }',
                                        "add_one")
                kernel((1,), (64,), (x.data_ptr(),))
        except Exception:  # noqa: BLE001
            pass
        torch.cuda.synchronize(device)


class Harness:
    """Lives as long as its evaluation process: keeps the CUDA context, the L2 flush buffer,
    and the baseline timings (eager, torch.compile, seed, peers per task/shape/dtype)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.on_gpu = device.type == "cuda"
        self.device_name = torch.cuda.get_device_name(device) if self.on_gpu else CPU_DEVICE
        warm_up_runtimes(device)
        self.guard = Guard(device)
        self.timer = GpuTimer(device) if self.on_gpu else CpuTimer()
        self.baselines: dict[tuple, dict[str, float | None]] = {}
        self.baseline_errors: dict[str, list[str]] = {}  # task -> what failed to time, and why
        self._compiled: dict[str, Callable] = {}
        self.workdir = Path(tempfile.mkdtemp(prefix="evo-candidates-"))
        self.environment = self._environment()
        self.count = 0

    def _environment(self) -> dict[str, str]:
        env = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
               "device": self.device_name}
        if self.on_gpu:
            env["cuda"] = str(torch.version.cuda)
            smi = shutil.which("nvidia-smi")
            if smi:
                out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader", "-i", "0"],
                                     capture_output=True, text=True, timeout=30).stdout.strip()
                env["driver"] = out.splitlines()[0] if out else "unknown"
            try:
                env["cupy"] = import_module("cupy").__version__
            except ImportError:
                pass
        else:
            version = nvcc_version()
            if version:
                env["nvcc"] = version
        return env

    # ---- configurations -------------------------------------------------------------------
    def verify_configs(self, task: Task) -> list[tuple[dict, torch.dtype]]:
        if self.on_gpu:
            return [(s, d) for d in task.dtypes for s in task.check_shapes]
        wants_half = any(d in (torch.float16, torch.bfloat16) for d in task.dtypes)
        dtypes = [d for d in CPU_DTYPES if d == torch.float32 or wants_half]
        return [(s, d) for d in dtypes for s in task.small_shapes]

    def timing_configs(self, task: Task) -> list[tuple[dict, torch.dtype]]:
        # The task's first dtype is its headline precision; the others are verified, not timed,
        # which keeps one evaluation inside the throughput budget.
        if self.on_gpu:
            return [(s, task.dtypes[0]) for s in task.shapes]
        return [(s, torch.float32) for s in task.small_shapes]

    # ---- the pipeline ---------------------------------------------------------------------
    def evaluate(self, task_name: str, source: str, language: str, time_it: bool,
                 phase: Callable[[str], None], compile_timeout: float = 60.0) -> tuple[EvalResult, bool]:
        """(result, restart): restart asks the supervisor to replace this process."""
        task = get_task(task_name)
        self.count += 1
        module_name = f"evo_candidate_{self.count}"
        phases: dict[str, float] = {}
        result = EvalResult(status="correct", device=self.device_name, environment=self.environment, phases=phases)
        restart = False
        try:
            self._run(task, source, language, time_it, module_name, phase, phases, result, compile_timeout)
        except Verdict as v:
            result.status, result.error, restart = v.status, v.error, v.restart
        except GuardViolation as g:
            result.status, result.error, restart = "rejected", str(g), g.restart
        finally:
            result.phases = phases  # the model holds a copy of the dict it was built with
            unload_module(module_name)
            (self.workdir / f"{module_name}.py").unlink(missing_ok=True)
            gc.collect()
        if result.status == "runtime_error" and self.on_gpu and not restart:
            restart = not self._cuda_healthy()
        if result.status != "correct":
            result.timings, result.runtime_ms = [], None
        return result, restart

    def _run(self, task, source, language, time_it, module_name, phase, phases, result, compile_timeout):
        phase("compile")
        t0 = time.perf_counter()
        try:
            violations = static_checks.check(source, task.forbidden, language)
        except SyntaxError as e:
            raise Verdict("compile_error", f"syntax error at line {e.lineno}: {e.msg}\n    {(e.text or '').rstrip()}") from None
        if violations:
            raise Verdict("rejected", "static checks refused the candidate:\n- " + "\n- ".join(violations[:10]))
        if language == "cuda" and not self.on_gpu:
            try:
                nvcc_compile_only(extract_cuda_source(source), timeout=compile_timeout)
            except CandidateCompileError as e:
                raise Verdict("compile_error", str(e)) from None
            phases["compile"] = time.perf_counter() - t0
            result.compile_only = True
            raise Verdict("runtime_error", "compiled with nvcc -arch=sm_90 (compile-only): this machine has no GPU, "
                          "so the kernel was neither run, verified nor timed")
        mode = self.guard.forbidden_mode(task.forbidden)
        candidate_file = str(self.workdir / f"{module_name}.py")
        try:
            with self.guard.watch(mode):
                module = load_module(source, module_name, self.workdir)
        except (GuardViolation, Verdict):
            raise
        except CandidateCompileError as e:
            raise Verdict("compile_error", str(e)) from None
        except BaseException as e:  # noqa: BLE001 - anything the import raises is the candidate's
            raise Verdict("compile_error", "importing the module failed:\n" + candidate_traceback(e, candidate_file)) from None
        entry = module.entry
        call = lambda inputs: self._call(entry, inputs, mode, candidate_file)  # noqa: E731
        # First call = JIT compile (Triton compiles per specialization on first launch).
        shape, dtype = self.verify_configs(task)[0]
        call(task.make_inputs(shape, dtype, FIXED_SEEDS[0], self.device))
        phases["compile"] = time.perf_counter() - t0

        phase("verify")
        t0 = time.perf_counter()
        self._verify(task, call)
        phases["verify"] = time.perf_counter() - t0
        if not time_it:
            return

        phase("baselines")
        t0 = time.perf_counter()
        configs = self.timing_configs(task)
        self._ensure_baselines(task, configs)
        self.guard.refresh()  # every candidate call so far was checked; baseline code is the harness's own
        phases["baselines"] = time.perf_counter() - t0
        if self.baseline_errors.get(task.name):
            result.environment = {**self.environment, "baseline_errors": "; ".join(self.baseline_errors[task.name])}

        phase("time")
        t0 = time.perf_counter()
        result.timings = [self._time_config(task, entry, shape, dtype, candidate_file) for shape, dtype in configs]
        phases["time"] = time.perf_counter() - t0
        ts = result.timings
        result.runtime_ms = geomean([t.median_ms for t in ts])
        result.speedup_eager = geomean([t.speedup_eager for t in ts])
        result.speedup_compile = geomean([t.speedup_compile for t in ts])
        result.speedup_seed = geomean([t.speedup_seed for t in ts])
        result.sol_fraction = geomean([t.sol_fraction for t in ts])

    def _sync(self) -> None:
        if self.on_gpu:
            torch.cuda.synchronize(self.device)

    def _call(self, entry, inputs, mode: ForbiddenOpsMode | None, candidate_file: str):
        """One guarded candidate call; turns whatever goes wrong into a Verdict."""
        try:
            with self.guard.watch(mode):
                out = entry(*inputs)
                self._sync()  # asynchronous CUDA errors surface here, still inside the guard
            return out
        except GuardViolation:
            raise
        except BaseException as e:  # noqa: BLE001 - the candidate's failure, whatever it is
            raise self._failure(e, candidate_file) from None

    def _failure(self, e: BaseException, candidate_file: str) -> Verdict:
        text = candidate_traceback(e, candidate_file)
        lowered = str(e).lower()
        if isinstance(e, (MemoryError, torch.OutOfMemoryError)) or any(s in lowered for s in OUT_OF_MEMORY):
            if self.on_gpu:
                gc.collect()
                torch.cuda.empty_cache()
            return Verdict("runtime_error", f"allocates far too much memory (the evaluation process is capped):\n{text}")
        if is_compile_exception(e):
            return Verdict("compile_error", text)
        fatal = self.on_gpu and any(s.lower() in lowered for s in FATAL_CUDA)
        if fatal:  # torch appends generic debugging advice; the first line is what matters
            first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
            text = (f"{type(e).__name__}: {first.strip()}\nThe kernel faulted (usually an out-of-bounds load or store: "
                    f"check masks, offsets and grid size); the CUDA context is lost and the process was replaced.")
        return Verdict("runtime_error", text, restart=fatal or not isinstance(e, Exception))

    def _cuda_healthy(self) -> bool:
        try:
            torch.cuda.synchronize(self.device)
            return float(torch.ones(4, device=self.device).sum()) == 4.0
        except Exception:  # noqa: BLE001 - a poisoned context raises anything
            return False

    def _poison(self, *groups) -> None:
        if self.on_gpu:
            sizes = [n for g in groups for n in bytes_of(tuple(g))]
            poison_cuda_cache(sizes + [2 * max(sizes, default=0)], self.device)

    # ---- verification ---------------------------------------------------------------------
    def _verify(self, task: Task, call) -> None:
        secret = secrets.randbelow(2**31 - 1_000_000) + 1_000_000
        for shape, dtype in self.verify_configs(task):
            tol = tolerance_for(task, dtype)
            for k, seed in enumerate((*FIXED_SEEDS, secret)):
                candidate_first = k % 2 == 0
                label = (f"shape {shape}, {dtype_name(dtype)}, {'a secret seed' if seed == secret else f'seed {seed}'}"
                         f" ({'candidate' if candidate_first else 'reference'} called first)")
                inputs = task.make_inputs(shape, dtype, seed, self.device)
                snapshot, ref_inputs = clone_inputs(inputs), clone_inputs(inputs)
                if candidate_first:
                    self._poison(tensors(inputs))
                    out = call(inputs)
                    expected = task.reference(*ref_inputs)
                else:
                    expected = task.reference(*ref_inputs)
                    self._poison(tensors(inputs), tensors(expected if isinstance(expected, tuple) else (expected,)))
                    out = call(inputs)
                self._sync()
                problem = inputs_unchanged(inputs, snapshot, task.writes_inputs)
                if problem is None:
                    for i in task.writes_inputs:  # documented in-place outputs must match the reference's
                        problem = compare(inputs[i], ref_inputs[i], tol)
                        if problem:
                            problem = f"in-place argument {i}: {problem}"
                            break
                if problem is None:
                    try:
                        problem = compare(out, expected, tol)
                    except DegenerateReference as e:
                        raise Verdict("runtime_error", f"harness problem, not the candidate's: {e} at {label}") from None
                if problem:
                    hint = " (a result cached from an earlier call?)" if k > 0 and "out of tolerance" in problem else ""
                    raise Verdict("incorrect", f"{label}: {problem}{hint}")

    # ---- timing ---------------------------------------------------------------------------
    def _input_sets(self, task: Task, shape: dict, dtype: torch.dtype) -> list[tuple]:
        return [task.make_inputs(shape, dtype, 1000 + i, self.device) for i in range(TIMING_INPUT_SETS)]

    def _ensure_baselines(self, task: Task, configs) -> None:
        for shape, dtype in configs:
            key = (task.name, task.shape_key(shape), dtype_name(dtype))
            if key in self.baselines:
                continue
            sets = self._input_sets(task, shape, dtype)
            times: dict[str, float | None] = {"eager": self.timer.measure(task.reference, sets).median}
            others = {"compile": self._compiled_reference(task) if self.on_gpu else None,
                      "seed": self._seed_entry(task)}
            others.update({f"peer:{n}": fn for n, fn in task.peers.items()})
            for name, fn in others.items():
                times[name] = None
                if fn is None:
                    continue
                try:
                    times[name] = self.timer.measure(fn, sets).median
                except Exception as e:  # noqa: BLE001 - a failing baseline is reported, not fatal
                    self.baseline_errors.setdefault(task.name, []).append(
                        f"{name} at {task.shape_key(shape)} {dtype_name(dtype)}: {type(e).__name__}: {e}"[:500])
            self.baselines[key] = times
            del sets
            self._sync()

    def _compiled_reference(self, task: Task):
        if task.name not in self._compiled:
            # Static shapes: one specialized compile per benchmark shape. With the default
            # (automatic dynamic) the second shape recompiles shape-generic code, up to 2x slower.
            self._compiled[task.name] = torch.compile(task.reference, dynamic=False)
        return self._compiled[task.name]

    def _seed_entry(self, task: Task):
        try:
            return import_module(task.seed).entry
        except Exception as e:  # noqa: BLE001 - e.g. a CUDA seed without cupy on this machine
            self.baseline_errors.setdefault(task.name, []).append(f"seed import: {type(e).__name__}: {e}"[:500])
            return None

    def _time_config(self, task: Task, entry, shape: dict, dtype: torch.dtype, candidate_file: str) -> ShapeTiming:
        label = f"benchmark shape {shape}, {dtype_name(dtype)}"
        sets = self._input_sets(task, shape, dtype)
        expected = [task.reference(*clone_inputs(s)) for s in sets]
        try:
            with self.guard.watch(None):
                m: Measurement = self.timer.measure(entry, sets)
        except GuardViolation:
            raise
        except BaseException as e:  # noqa: BLE001
            raise self._failure(e, candidate_file) from None
        tol = tolerance_for(task, dtype)
        for k, (out, exp) in enumerate(zip(m.outputs, expected)):
            problem = compare(out, exp, tol)
            if problem:
                raise Verdict("incorrect", f"{label}, output of a timed call on input set {k}: {problem}")
        if self.on_gpu and side_stream_suspected(m):
            raise Verdict("rejected", f"{label}: host wall time {m.wall_median:.3f} ms per call but CUDA events saw only "
                          f"{m.median:.3f} ms: work ran outside the current stream (side stream or deferred work)")
        sol = speed_of_light_ms(task.flops(shape), task.bytes(shape, dtype), dtype_name(dtype), self.device_name)
        if sol is not None and m.median * SOL_SLACK < sol:
            raise Verdict("rejected", f"{label}: {m.median:.4f} ms is faster than the hardware allows "
                          f"(speed of light {sol:.4f} ms from {task.bytes(shape, dtype):.3g} bytes and "
                          f"{task.flops(shape):.3g} FLOPs): the work is not being done")
        base = self.baselines[(task.name, task.shape_key(shape), dtype_name(dtype))]
        ratio = lambda b: b / m.median if b else None  # noqa: E731
        return ShapeTiming(
            shape=shape, dtype=dtype_name(dtype), median_ms=m.median, spread=m.spread, n=len(m.times_ms),
            wall_ms=m.wall_median, eager_ms=base["eager"], compile_ms=base["compile"], seed_ms=base["seed"],
            peers_ms={k.removeprefix("peer:"): v for k, v in base.items() if k.startswith("peer:") and v is not None},
            speedup_eager=ratio(base["eager"]), speedup_compile=ratio(base["compile"]), speedup_seed=ratio(base["seed"]),
            sol_ms=sol, sol_fraction=(sol / m.median) if sol else None)
