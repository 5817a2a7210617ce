"""Compile a candidate: import its module from a file (Triton JIT-compiles on the first
call, which the pipeline counts as compile time), or, for CUDA without a GPU, compile its
CUDA_SOURCE with `nvcc -arch=sm_90 -cubin` (compile-only: nothing can run)."""
from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from types import ModuleType

NVCC_ARGS = ("-arch=sm_90", "-cubin", "-std=c++17")
_NVRTC_TEMP_FILE = re.compile(r"/\S*?[0-9a-f]{40}\.cubin\.cu")


class CandidateCompileError(Exception):
    """The candidate does not compile; the message is written for the LLM."""


def load_module(source: str, name: str, directory: Path) -> ModuleType:
    """Import `source` as module `name` from a real file (Triton reads kernel source back
    through inspect, so the file must exist while the module lives)."""
    path = directory / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    if not callable(getattr(module, "entry", None)):
        sys.modules.pop(name, None)
        raise CandidateCompileError("the module defines no callable `entry(*inputs)`")
    return module


def unload_module(name: str) -> None:
    sys.modules.pop(name, None)


def is_compile_exception(exc: BaseException) -> bool:
    """Triton's compiler errors, CuPy/NVRTC's compile errors, and anything raised from
    inside Triton's compiler (MLIR pass failures surface as plain RuntimeError)."""
    for cls in type(exc).__mro__:
        if cls.__name__ in {"CompilationError", "CompileException", "NVRTCError"}:
            return True
    for frame in traceback.extract_tb(exc.__traceback__):
        if "/triton/compiler/" in frame.filename or "/triton/backends/" in frame.filename:
            return True
    return False


def candidate_traceback(exc: BaseException, candidate_file: str, limit_chars: int = 3000) -> str:
    """The exception with only the candidate's own frames: what the LLM can act on."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == candidate_file]
    lines = [f"  line {f.lineno}, in {f.name}: {f.line}" for f in frames[-5:]]
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    text = text.replace(candidate_file, "candidate.py")
    text = _NVRTC_TEMP_FILE.sub("candidate.cu", text)  # CuPy compiles from a temp file named by hash
    out = (("\n".join(lines) + "\n") if lines else "") + text
    return out if len(out) <= limit_chars else out[: limit_chars // 2] + "\n...\n" + out[-limit_chars // 2:]


def extract_cuda_source(source: str) -> str:
    """The module-level string constant CUDA_SOURCE."""
    tree = ast.parse(source)
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "CUDA_SOURCE" for t in targets):
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                return node.value.value
            raise CandidateCompileError("CUDA_SOURCE must be a plain string constant (no f-string or expression)")
    raise CandidateCompileError("a CUDA candidate must define its kernels in a module-level string CUDA_SOURCE")


def nvcc_version() -> str | None:
    exe = shutil.which("nvcc")
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    return out.splitlines()[-1] if out else None


def nvcc_compile_only(cuda_source: str, timeout: float) -> None:
    """Compile with nvcc for sm_90; raises CandidateCompileError with nvcc's message."""
    exe = shutil.which("nvcc")
    if exe is None:
        raise CandidateCompileError("nvcc is not installed on this machine: CUDA candidates cannot be compiled here")
    with tempfile.TemporaryDirectory(prefix="evo-nvcc-") as tmp:
        src = Path(tmp) / "candidate.cu"
        src.write_text(cuda_source)
        try:
            proc = subprocess.run([exe, *NVCC_ARGS, "-o", str(Path(tmp) / "candidate.cubin"), str(src)],
                                  capture_output=True, text=True, timeout=timeout, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise CandidateCompileError(f"nvcc did not finish within {timeout:.0f} s") from None
        if proc.returncode != 0:
            message = (proc.stderr + proc.stdout).replace(str(src), "candidate.cu").strip()
            raise CandidateCompileError(f"nvcc {' '.join(NVCC_ARGS)} failed:\n{message[-4000:]}")
