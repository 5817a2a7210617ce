"""Replies -> name / code / thought, tolerant of what real models send.

Asked format: `NAME: ...`, `THOUGHT: ...`, then one fenced code block. Accepted as well:
fences tagged python/py/triton/cuda or untagged, several blocks (the one defining `entry`
wins; a kernel and its wrapper split over blocks are joined), a `<think>` section (dropped),
markdown bold labels, a bare module without fences. A reply without usable code becomes
a ParsedReply with `code=None` and an `error` written for the next prompt.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass

_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)
_OPEN_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*)\Z", re.S | re.M)
_LABEL = r"^[ \t]*(?:[#>*_ ]*)?{}(?:[*_ ]*)?[ \t]*[:：][ \t]*(?:[*_]*)"
_NAME = re.compile(_LABEL.format("name") + r"(.+?)[*_ ]*$", re.I | re.M)
_THOUGHT = re.compile(_LABEL.format("(?:thought|rationale|idea)") + r"(.+?)(?=^[ \t]*```|^[ \t]*(?:[#*_ ]*)name\b|\Z)",
                      re.I | re.M | re.S)
_NOT_CODE_TAGS = {"json", "bash", "sh", "shell", "text", "console", "output", "diff", "c", "cpp", "c++", "cu", "cuda"}


@dataclass(frozen=True)
class ParsedReply:
    code: str | None
    name: str | None = None
    thought: str | None = None
    language: str | None = None  # triton | cuda, as the code shows
    error: str | None = None


def signature_arity(signature: str) -> int | None:
    """Positional parameters of a task signature like "entry(x: Tensor[M, N], eps: float) -> Tensor"."""
    try:
        fn = ast.parse(f"def {signature}: pass").body[0]
    except SyntaxError:
        return None
    return len(fn.args.posonlyargs) + len(fn.args.args)


def code_language(code: str) -> str:
    return "cuda" if re.search(r"\bCUDA_SOURCE\b|\bcupy\b|__global__", code) else "triton"


def _entry(tree: ast.Module) -> ast.FunctionDef | None:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "entry":
            return node
    return None


def _check(code: str, arity: int | None, language: str) -> str | None:
    """Why this code cannot be a candidate, or None."""
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        return f"the code does not parse: SyntaxError at line {e.lineno}: {e.msg}"
    fn = _entry(tree)
    if fn is None:
        return "the code defines no top-level function `entry(...)`: the harness calls entry with the task's inputs"
    if arity is not None and fn.args.vararg is None:
        positional = fn.args.posonlyargs + fn.args.args
        required = len(positional) - len(fn.args.defaults)
        if not required <= arity <= len(positional):
            return (f"`entry` takes {len(positional)} positional parameter(s) ({', '.join(a.arg for a in positional)})"
                    f" but the task calls it with {arity}")
    if language == "cuda" and not re.search(r"__global__", code):
        return "a CUDA candidate must hold its extern \"C\" __global__ kernels in the module-level CUDA_SOURCE string"
    return None


def parse_reply(text: str | None, *, language: str = "triton", arity: int | None = None) -> ParsedReply:
    """`language` is the job's (triton | cuda | both); `arity` the task's number of inputs."""
    if not text or not text.strip():
        return ParsedReply(None, error="the reply is empty")
    text = text.replace("\r\n", "\n")
    had_think = "<think>" in text.lower()
    text = _THINK.sub("", text)
    if had_think and "<think>" in text.lower():
        return ParsedReply(None, error="the reply stops inside its <think> section (cut off at max_tokens?)")
    name = _first(_NAME, text)
    thought = _first(_THOUGHT, text)

    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(text)]
    truncated = False
    if not blocks:
        rest = _OPEN_FENCE.search(text)
        if rest:  # an opening fence never closed: the reply was cut off
            blocks, truncated = [(rest.group(1).lower(), rest.group(2))], True
        elif _looks_like_module(text):
            blocks = [("", text)]
    if not thought:
        prose = _FENCE.sub("", text) if not truncated else text[: text.find("```")]
        prose = _NAME.sub("", prose).strip()
        thought = prose[:1500] or None
    python = [body for tag, body in blocks if tag not in _NOT_CODE_TAGS]
    if not python:
        what = "only non-Python code blocks" if blocks else "no code block (prose only)"
        return ParsedReply(None, name, thought, error=f"the reply has {what}: send the whole Python module in one "
                                                        "```python block")

    wanted = language if language in ("triton", "cuda") else None
    code, error = _pick(python, arity, wanted)
    if code is not None:
        return ParsedReply(code, name, thought, wanted or code_language(code))
    if truncated:
        error = f"the reply ends inside its code block (cut off at max_tokens?); {error}"
    return ParsedReply(None, name, thought, error=error)


def _pick(blocks: list[str], arity: int | None, language: str | None) -> tuple[str | None, str | None]:
    """The last block defining `entry` (models often show "before" then "after"), with the
    earlier blocks that define names it uses but lacks (a kernel in one block, its wrapper in
    the next)."""
    blocks = [b.strip("\n") + "\n" for b in blocks]
    trees = []
    for b in blocks:
        try:
            trees.append(ast.parse(b))
        except SyntaxError:
            trees.append(None)
    with_entry = [i for i, t in enumerate(trees) if t is not None and _entry(t) is not None]
    if not with_entry:
        return None, _check(blocks[-1], arity, language or code_language(blocks[-1]))
    last = with_entry[-1]
    missing = _free_names(trees[last]) if last else set()
    helpers = [blocks[i] for i in range(last) if trees[i] is not None and missing & _defined_names(trees[i])]
    code = "\n\n".join([*helpers, blocks[last]])
    error = _check(code, arity, language or code_language(code))
    return (code, None) if error is None else (None, error)


def _defined_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def _free_names(tree: ast.Module) -> set[str]:
    """Names read somewhere in the module that it never binds (builtins aside)."""
    import builtins

    bound, loads = _defined_names(tree), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loads if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return loads - bound - set(dir(builtins))


def _first(pattern: re.Pattern, text: str) -> str | None:
    m = pattern.search(text)
    if not m:
        return None
    value = re.sub(r"\s+", " ", m.group(1)).strip().strip("*_").strip()
    return value or None


def _looks_like_module(text: str) -> bool:
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return False
    return _entry(tree) is not None
