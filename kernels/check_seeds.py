"""GPU check of the library's kernels: each task's implementation (kernels/<task>.py, and
kernels/<task>_cuda.py where one exists) against the task's reference at the odd check
shapes and the benchmark shapes, in each of the task's dtypes, with the task's tolerance;
then a rough time (triton.testing.do_bench median, L2 cleared between runs) of the kernel,
eager PyTorch and the task's peers at the benchmark shapes in the headline dtype.
The evaluation harness (workers/) is the judge of speed; this is the quick proof that each
kernel compiles and is right at full size.

    python3 -m kernels.check_seeds [--tasks softmax,rmsnorm] [--jsonl FILE]   # check every shape and dtype
    python3 -m kernels.check_seeds --time [...]   # benchmark shapes, headline dtype: check and time

Check runs may go in parallel (one process per task group: the Triton compiles dominate);
time runs go alone on the GPU.
"""
import argparse
import importlib.util
import json
import time
from importlib import import_module

import torch
import triton.testing

import baselines

OPERATORS = ["softmax", "rmsnorm", "layernorm", "rope", "swiglu", "cross_entropy", "add_rmsnorm",
             "matmul_bias_gelu", "argmax", "decode_attention"]
# H200 ceilings for the speed-of-light time: copy bandwidth measured on the device machine
# (field notes), dense tensor-core bf16/fp16 and CUDA-core fp32 peaks.
HBM_BYTES_PER_S = 4.3e12
PEAK_FLOPS = {torch.bfloat16: 790e12, torch.float16: 790e12, torch.float32: 67e12}


def implementations(task) -> list[str]:
    names = [task.seed]
    if importlib.util.find_spec(f"{task.seed}_cuda") is not None:
        names.append(f"{task.seed}_cuda")
    return names


def mismatch(out, ref, tol) -> tuple[bool, float]:
    """(within tolerance, relative error) by the rule of baselines.task.Tolerance: elementwise
    |out - ref| <= atol + rtol * |ref| (NaN fails) and ||out - ref|| / ||ref|| <= rel."""
    outs, refs = (out if isinstance(out, tuple) else (out,)), (ref if isinstance(ref, tuple) else (ref,))
    ok, worst = len(outs) == len(refs), 0.0
    for o, r in zip(outs, refs):
        if o.shape != r.shape or o.dtype != r.dtype:
            return False, float("inf")
        o64, r64 = o.double(), r.double()
        rel = float(torch.linalg.vector_norm(o64 - r64) / torch.linalg.vector_norm(r64).clamp_min(1e-30))
        ok = ok and bool(torch.isclose(o64, r64, rtol=tol.rtol, atol=tol.atol).all()) and rel <= tol.rel
        worst = max(worst, rel)
        del o64, r64
    return ok, worst


def check(task, module_name: str, timed: bool, device: str = "cuda") -> list[dict]:
    """Every check and benchmark shape in every dtype; with `timed`, only the benchmark shapes
    in the headline dtype (the task's first), each also timed."""
    entry = import_module(module_name).entry
    rows = []
    kinds = [("bench", task.shapes)] if timed else [("check", task.check_shapes), ("bench", task.shapes)]
    for kind, shapes in kinds:
        for dtype in task.dtypes[:1] if timed else task.dtypes:
            for shape in shapes:
                row = {"task": task.name, "impl": module_name, "kind": kind, "dtype": str(dtype).removeprefix("torch."),
                       "shape": task.shape_key(shape)}
                try:
                    inputs = task.make_inputs(shape, dtype, 7, device)
                    started = time.perf_counter()
                    out = entry(*inputs)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    row["first_call_s"] = round(time.perf_counter() - started, 3)  # compile + run
                    row["ok"], row["rel_err"] = mismatch(out, task.reference(*inputs), task.tolerance(dtype))
                    if timed:
                        row["ms"] = triton.testing.do_bench(lambda: entry(*inputs), return_mode="median")
                        row["eager_ms"] = triton.testing.do_bench(lambda: task.reference(*inputs), return_mode="median")
                        for peer, fn in task.peers.items():
                            row[f"{peer}_ms"] = triton.testing.do_bench(lambda: fn(*inputs), return_mode="median")
                        row["sol_ms"] = 1e3 * max(task.bytes(shape, dtype) / HBM_BYTES_PER_S,
                                                  task.flops(shape) / PEAK_FLOPS[dtype])
                except Exception as e:  # noqa: BLE001 - report every failure, check the rest
                    row["ok"], row["error"] = False, f"{type(e).__name__}: {e}"[:400]
                inputs = out = None  # free before the next shape's inputs
                if device == "cuda":
                    torch.cuda.empty_cache()
                rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(OPERATORS))
    parser.add_argument("--time", action="store_true", help="benchmark shapes in the headline dtype, checked and timed")
    parser.add_argument("--jsonl", help="also append one JSON object per checked case to this file")
    args = parser.parse_args()
    rows = []
    for name in args.tasks.split(","):
        task = baselines.get_task(name)
        for module_name in implementations(task):
            rows += check(task, module_name, args.time)
    if args.jsonl:
        with open(args.jsonl, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    for r in rows:
        timing = ""
        if "ms" in r:
            peers = " ".join(f"{k[:-3]} {v:.3f}" for k, v in r.items() if k.endswith("_ms") and k not in ("eager_ms", "sol_ms"))
            timing = (f" | {r['ms']:.3f} ms, eager {r['eager_ms']:.3f}{', ' + peers if peers else ''}"
                      f", {100 * r['sol_ms'] / r['ms']:.0f}% of speed-of-light")
        status = "ok" if r["ok"] else "FAIL " + r.get("error", f"rel_err {r.get('rel_err')}")
        print(f"{r['impl']:<28} {r['kind']:<5} {r['dtype']:<8} {r['shape']:<32} {status}"
              f" rel {r.get('rel_err', float('nan')):.1e} first {r.get('first_call_s', float('nan')):.2f}s{timing}")


if __name__ == "__main__":
    main()
