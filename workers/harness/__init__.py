"""The evaluation harness: what runs inside the spawned evaluation process.

One concern per module: `channel` (the private pipe), `static_checks` (AST scan before
anything runs), `compile` (load a candidate, nvcc compile-only), `guards` (runtime
anti-cheat checks around each candidate call), `verify` (correctness), `timing` (GPU
timing, baselines, speed of light), `child` (the process's main loop). Only `channel`
is imported by the supervisor (workers/sandbox.py): it must not import torch.
"""
