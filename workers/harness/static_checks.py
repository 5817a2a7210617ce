"""Static checks: an AST scan of a candidate before any of it runs.

A candidate is a kernel plus a thin launcher, so the allowed surface is small: imports
from an allowlist, no file/network/process/thread access, no streams, no patching of
library attributes (timers, synchronize, settings), no interpreter internals, and none
of the task's forbidden ops — also through aliases (`import torch.nn.functional as F`,
`from torch import softmax as s`, `f = torch.softmax`, `getattr(torch, "softmax")`) and
as tensor methods (`x.softmax()`). Dynamic tricks the scan cannot see are caught at run
time (workers/harness/guards.py).
"""
from __future__ import annotations

import ast
from typing import Iterable

# Top-level modules a candidate may import. Everything else (os, sys, threading, socket,
# subprocess, ctypes, importlib, baselines, kernels, ...) is refused.
ALLOWED_MODULES = {"torch", "triton", "cupy", "math", "functools", "typing", "__future__", "dataclasses",
                   "itertools", "operator"}

# Dotted-name prefixes a candidate must not touch, with the reason the LLM gets.
_STREAMS = "uses its own CUDA stream or graph; launch on torch.cuda.current_stream() only"
_PROCESSES = "starts processes or threads"
_FILES = "reads or writes files"
_NOT_A_KERNEL = "hands the work to a compiler or op registry instead of a Triton/CUDA kernel"
_SETTINGS = "changes global torch settings"
_TIMING = "touches the timing utilities"
FORBIDDEN_PREFIXES = {
    **dict.fromkeys(["torch.cuda.Stream", "torch.cuda.stream", "torch.cuda.StreamContext", "torch.cuda.ExternalStream",
                     "torch.cuda.set_stream", "torch.Stream", "torch.cuda.graph", "torch.cuda.graphs",
                     "torch.cuda.CUDAGraph", "torch.cuda.make_graphed_callables", "cupy.cuda.Stream",
                     "cupy.cuda.stream", "cupy.cuda.graph"], _STREAMS),
    **dict.fromkeys(["torch.multiprocessing", "torch.distributed", "torch.utils.data"], _PROCESSES),
    **dict.fromkeys(["torch.load", "torch.save", "torch.from_file", "torch.hub", "torch.UntypedStorage.from_file",
                     "torch.TypedStorage.from_file", "cupy.load", "cupy.save", "cupy.fromfile"], _FILES),
    **dict.fromkeys(["torch.compile", "torch.jit", "torch.export", "torch.ops", "torch.library", "torch.classes",
                     "torch.utils.cpp_extension", "torch.overrides"], _NOT_A_KERNEL),
    **dict.fromkeys(["torch.set_float32_matmul_precision", "torch.set_default_dtype", "torch.set_default_device",
                     "torch.set_flush_denormal", "torch.cuda.set_per_process_memory_fraction",
                     "torch.set_num_threads"], _SETTINGS),
    **dict.fromkeys(["triton.testing"], _TIMING),
}

FORBIDDEN_BUILTINS = {
    "open": "reads or writes files", "eval": "evaluates strings as code", "exec": "evaluates strings as code",
    "compile": "compiles strings as code", "__import__": "imports dynamically", "globals": "reaches module globals",
    "locals": "reaches frame locals", "vars": "reaches namespaces", "input": "reads stdin",
    "breakpoint": "starts a debugger", "exit": "exits the process", "quit": "exits the process",
    "__builtins__": "reaches the builtins", "__loader__": "reaches the import system",
    "__spec__": "reaches the import system",
}
_SAFE_DUNDERS = {"__name__", "__file__", "__doc__", "__init__", "__call__", "__len__", "__getitem__"}


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


class _Resolver:
    """Maps local names to the dotted module paths they stand for."""

    def __init__(self, tree: ast.AST):
        self.aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        self.aliases[a.asname] = a.name
                    else:
                        root = a.name.split(".")[0]
                        self.aliases[root] = root
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        # `f = torch.softmax`, `F = torch.nn.functional`, chains of them: a few passes reach a fixpoint.
        for _ in range(3):
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    dotted = self.dotted(node.value)
                    if dotted:
                        self.aliases[node.targets[0].id] = dotted

    def dotted(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        attr = constant_getattr(node)
        if attr is not None:
            base = self.dotted(node.args[0])
            return f"{base}.{attr}" if base else None
        return None


def constant_getattr(node: ast.AST) -> str | None:
    """The attribute name of `getattr(obj, "name"[, default])`, else None."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
            and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
        return node.args[1].value
    return None


def _matches(dotted: str, prefixes: Iterable[str]) -> str | None:
    for prefix in prefixes:
        if dotted == prefix or dotted.startswith(prefix + "."):
            return prefix
    return None


def check(source: str, forbidden: Iterable[str] = (), language: str = "triton") -> list[str]:
    """Violations found in `source` (empty: clean), each one sentence for the LLM.
    Raises SyntaxError for source that does not parse (the caller reports a compile_error)."""
    tree = ast.parse(source, filename="candidate.py")
    forbidden = tuple(forbidden)
    forbidden_short = {_short(f) for f in forbidden}
    resolver = _Resolver(tree)
    found: list[str] = []

    def flag(node: ast.AST, message: str) -> None:
        text = f"line {getattr(node, 'lineno', '?')}: {message}"
        if text not in found:
            found.append(text)

    def check_dotted(node: ast.AST, dotted: str) -> None:
        op = _matches(dotted, forbidden)
        if op:
            flag(node, f"calls {op}, which this task forbids: compute it in your own kernel")
        prefix = _matches(dotted, FORBIDDEN_PREFIXES)
        if prefix:
            flag(node, f"uses {dotted}: {FORBIDDEN_PREFIXES[prefix]}")
        parts = dotted.split(".")
        if any(p.startswith("_") for p in parts[1:]) and not any(p in _SAFE_DUNDERS for p in parts[1:]):
            flag(node, f"uses private internals {dotted}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                root = a.name.split(".")[0]
                if root not in ALLOWED_MODULES:
                    flag(node, _import_message(a.name))
                check_dotted(node, a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level or not node.module:
                flag(node, "uses a relative import: a candidate is one self-contained module")
                continue
            if node.module.split(".")[0] not in ALLOWED_MODULES:
                flag(node, _import_message(node.module))
            for a in node.names:
                if a.name == "*":
                    flag(node, f"uses `from {node.module} import *`: import names explicitly")
                check_dotted(node, f"{node.module}.{a.name}")
        elif isinstance(node, ast.Name):
            if node.id in FORBIDDEN_BUILTINS and node.id not in resolver.aliases:
                flag(node, f"uses {node.id}(): {FORBIDDEN_BUILTINS[node.id]}")
            dotted = resolver.aliases.get(node.id)
            if dotted and isinstance(node.ctx, ast.Load):
                check_dotted(node, dotted)
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("__") and node.attr.endswith("__") and node.attr not in _SAFE_DUNDERS:
                flag(node, f"accesses interpreter internals ({node.attr})")
            dotted = resolver.dotted(node)
            if dotted:
                check_dotted(node, dotted)
            elif node.attr in forbidden_short:
                flag(node, f"calls .{node.attr}(), which this task forbids: compute it in your own kernel")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in {"getattr", "setattr", "delattr", "hasattr"}:
            _check_attr_call(node, resolver, forbidden_short, flag, check_dotted)
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for target in _flatten(targets):
                if isinstance(target, (ast.Attribute, ast.Subscript)):
                    base = resolver.dotted(target.value if isinstance(target, ast.Subscript) else target)
                    if base:
                        flag(node, f"assigns to {base}: patching library attributes (timers, synchronize, settings) is not allowed")
    if language == "cuda" and not _defines(tree, "CUDA_SOURCE"):
        flag(tree, "a CUDA candidate must define its kernels in a module-level string constant CUDA_SOURCE")
    return found


def _import_message(name: str) -> str:
    root = name.split(".")[0]
    if root in {"baselines", "kernels"}:
        return f"imports {name}: the reference and the kernel library are off limits; write the kernel yourself"
    return f"imports {name}: only {', '.join(sorted(ALLOWED_MODULES - {'__future__'}))} may be imported"


def _check_attr_call(node: ast.Call, resolver: _Resolver, forbidden_short: set[str], flag, check_dotted) -> None:
    name = node.func.id
    if len(node.args) < 2 or not (isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
        flag(node, f"calls {name}() with a computed attribute name: name attributes literally")
        return
    attr = node.args[1].value
    base = resolver.dotted(node.args[0])
    if name in {"setattr", "delattr"} and base:
        flag(node, f"{name}() on {base}: patching library attributes is not allowed")
    if base:
        check_dotted(node, f"{base}.{attr}")
    elif attr in forbidden_short:
        flag(node, f"reaches .{attr} through {name}(), which this task forbids")
    if attr.startswith("__") and attr.endswith("__") and attr not in _SAFE_DUNDERS:
        flag(node, f"accesses interpreter internals ({attr})")


def _flatten(targets) -> list[ast.AST]:
    out = []
    for t in targets:
        if isinstance(t, (ast.Tuple, ast.List)):
            out.extend(_flatten(t.elts))
        else:
            out.append(t)
    return out


def _defines(tree: ast.Module, name: str) -> bool:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return True
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            return True
    return False
