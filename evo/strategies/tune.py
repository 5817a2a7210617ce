"""`tune`: the LLM-free floor. Mutates a kernel's declared tunables and keeps what is faster.

A tunable is a module-level line `NAME = value  # tunable: v1, v2, v3` (see kernels/softmax.py).
Each generation hill-climbs: the one-step neighbours of the best valid member (each tunable
moved to an adjacent choice), then of the next best, then random two-tunable jumps from the
best; never a source the job has already tried. Deterministic given the rng.
"""
from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass

from evo.strategies.base import JobInfo, Member, Proposal
from workers.protocol import content_hash

_TUNABLE_LINE = re.compile(
    r"^(?P<name>[A-Za-z_]\w*)(?P<eq>\s*=\s*)(?P<value>[^#\n]*?)(?P<gap>\s*)#\s*tunable:(?P<choices>[^\n]*)$",
    re.MULTILINE)


@dataclass(frozen=True)
class Tunable:
    name: str
    value: object
    choices: tuple


def _literal(text: str, where: str):
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        raise ValueError(f"tunable {where}: {text.strip()!r} is not a Python literal") from None


def parse_tunables(source: str) -> dict[str, Tunable]:
    """The declared tunables in source order. Raises ValueError on an unparsable line."""
    tunables = {}
    for m in _TUNABLE_LINE.finditer(source):
        name = m["name"]
        choices = tuple(_literal(c, f"{name} choice") for c in m["choices"].split(",") if c.strip())
        if not choices:
            raise ValueError(f"tunable {name} lists no choices")
        tunables[name] = Tunable(name, _literal(m["value"], name), choices)
    return tunables


def set_tunables(source: str, values: dict[str, object]) -> str:
    """`source` with the named tunables set (value written with repr); comments stay."""
    unknown = set(values) - set(parse_tunables(source))
    if unknown:
        raise KeyError(f"no tunable named {', '.join(sorted(unknown))}")

    def replace(m: re.Match) -> str:
        if m["name"] not in values:
            return m[0]
        return f"{m['name']}{m['eq']}{values[m['name']]!r}{m['gap'] or '  '}# tunable:{m['choices']}"

    return _TUNABLE_LINE.sub(replace, source)


def neighbours(tunables: dict[str, Tunable]) -> list[dict[str, object]]:
    """One-step moves: each tunable to the choice before or after its current one."""
    moves = []
    for t in tunables.values():
        if t.value in t.choices:
            i = t.choices.index(t.value)
            steps = [t.choices[j] for j in (i - 1, i + 1) if 0 <= j < len(t.choices)]
        else:
            steps = list(t.choices)
        moves += [{t.name: v} for v in steps]
    return moves


class Tune:
    name = "tune"
    uses_llm = False

    def __init__(self, per_generation: int | None = None, parents: int = 2, random_tries: int = 64):
        self.per_generation = per_generation
        self.parents = parents
        self.random_tries = random_tries

    def propose(self, job: JobInfo, history: list[Member], rng: random.Random, llm=None) -> list[Proposal]:
        want = min(self.per_generation or int(job.config.get("samplers", 4)), job.budget - job.calls_used)
        valid = sorted((m for m in history if m.valid), key=lambda m: m.runtime_ms)
        if want <= 0 or not valid:
            return []
        seen = {content_hash(m.source, job.task) for m in history}
        proposals: list[Proposal] = []

        def offer(parent: Member, change: dict) -> None:
            source = set_tunables(parent.source, change)
            digest = content_hash(source, job.task)
            if digest in seen or len(proposals) >= want:
                return
            seen.add(digest)
            current = parse_tunables(parent.source)
            what = ", ".join(f"{k} {current[k].value!r} -> {v!r}" for k, v in change.items())
            proposals.append(Proposal(source=source, language=parent.language, operator="tune",
                                      parent_ids=(parent.candidate_id,), name=what,
                                      thought=f"tune {what} from candidate {parent.candidate_id}"))

        for parent in valid[: self.parents]:
            moves = neighbours(parse_tunables(parent.source))
            rng.shuffle(moves)
            for change in moves:
                offer(parent, change)
        best = valid[0]
        tunables = list(parse_tunables(best.source).values())
        for _ in range(self.random_tries if len(tunables) >= 2 else 0):
            if len(proposals) >= want:
                break
            picked = rng.sample(tunables, 2)
            offer(best, {t.name: rng.choice(t.choices) for t in picked})
        return proposals
