"""Traverse = solution guiding (which layers, evo/traverse/guiding.py) + prompt engineering
(Jinja2 templates, one per operator, in templates/) + reply parsing (parse.py).

A strategy says what to ask (`Ask`: operator, parents, language, island); a `Traverse`
renders each ask into chat messages carrying exactly its layers, sends them through the
job's LLM client in one concurrent batch, and turns the replies into Proposals.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import jinja2

from baselines import get_task
from evo.llm.client import ChatRequest
from evo.strategies.base import JobInfo, Member, Proposal
from evo.traverse import guiding
from evo.traverse.guiding import I1, I2, I3, best_of, seed_of, view
from evo.traverse.parse import parse_reply, signature_arity

TEMPLATES = Path(__file__).parent / "templates"
OPERATORS = tuple(sorted(p.stem for p in TEMPLATES.glob("*.j2") if not p.stem.startswith("_") and p.stem != "system"))


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True, autoescape=False)


def render(template: str, **context) -> str:
    text = environment().get_template(f"{template}.j2").render(**context)
    # Tidy the blank lines the template logic leaves, outside code blocks only (code is shown verbatim).
    parts = text.split("```")
    parts[::2] = [re.sub(r"\n{3,}", "\n\n", p) for p in parts[::2]]
    return "```".join(parts).strip() + "\n"


@dataclass(frozen=True)
class Ask:
    """One prompt a strategy wants sent."""

    operator: str  # the template: improve, init, mutation, crossover, e1, e2, m1, m2, funsearch, translate
    parents: tuple[Member, ...] = ()
    language: str = "triton"
    island: int | None = None


@dataclass(frozen=True)
class Traverse:
    layers: frozenset[str]  # which of I1, I2, I3 the prompts carry (I1 always)
    anchor: str | None = "best"  # the kernel I1 shows: "best", "seed" (EoH: the baseline), or None
    parent_titles: tuple[str, ...] | None = None  # headings for the parents in I2 (FunSearch: v0, v1)

    def __post_init__(self):
        if I1 not in self.layers or not self.layers <= {I1, I2, I3}:
            raise ValueError(f"layers must include I1 and be a subset of I1, I2, I3: {sorted(self.layers)}")

    def messages(self, job: JobInfo, history: list[Member], ask: Ask, rng: random.Random,
                 population: Sequence[Member] = ()) -> tuple[dict, dict]:
        if ask.operator not in OPERATORS:
            raise ValueError(f"no template for operator {ask.operator!r}; known: {', '.join(OPERATORS)}")
        task = guiding.task_context(job)
        best = best_of(history)
        anchor = {"best": best or seed_of(history), "seed": seed_of(history), None: None}[self.anchor]
        titles = {"best": "Current best kernel", "seed": "Baseline kernel", None: ""}
        system = render("system", language=ask.language, device=task["device"])
        user = render(ask.operator, task=task, layers=self.layers, language=ask.language,
                      anchor=view(anchor) if anchor else None, anchor_title=titles[self.anchor],
                      population=[view(m) for m in population], parents=[view(m) for m in ask.parents],
                      parent_titles=self.parent_titles, anchor_id=anchor.candidate_id if anchor else None,
                      insights=guiding.insights(history, rng) if I3 in self.layers else [],
                      feedback=guiding.feedback(history, best, job.unusable_replies) if I3 in self.layers else {})
        return {"role": "system", "content": system}, {"role": "user", "content": user}

    def requests(self, job: JobInfo, history: list[Member], asks: Sequence[Ask], rng: random.Random,
                 population: Sequence[Member] = ()) -> list[ChatRequest]:
        seed = job.config.get("seed", 0)
        return [ChatRequest(messages=self.messages(job, history, ask, rng, population),
                            key=f"seed={seed}/gen={job.generation}/sample={i}")
                for i, ask in enumerate(asks)]

    def propose(self, job: JobInfo, history: list[Member], asks: Sequence[Ask], rng: random.Random, llm,
                population: Sequence[Member] = ()) -> list[Proposal]:
        if not asks:
            return []
        replies = llm.generate(self.requests(job, history, asks, rng, population))
        arity = signature_arity(get_task(job.task).signature)
        proposals = []
        for ask, reply in zip(asks, replies):
            common = dict(language=ask.language, operator=ask.operator, llm_call_id=reply.call_id, island=ask.island,
                          parent_ids=tuple(m.candidate_id for m in ask.parents))
            if reply.error:
                proposals.append(Proposal(None, error=f"LLM call failed: {reply.error}", **common))
                continue
            parsed = parse_reply(reply.text, language=ask.language, arity=arity)
            proposals.append(Proposal(parsed.code, name=parsed.name, thought=parsed.thought, error=parsed.error,
                                      **common))
        return proposals


def samplers_left(job: JobInfo, samplers: int) -> int:
    """How many prompts this generation may send: the samplers, within the remaining budget."""
    return max(0, min(samplers, job.budget - job.calls_used))


def languages(job: JobInfo, n: int) -> list[str]:
    """The language of each of n prompts: the job's, or alternating when it allows both."""
    if job.language == "both":
        return ["triton" if (job.generation + i) % 2 == 0 else "cuda" for i in range(n)]
    return [job.language] * n


__all__ = ["Ask", "I1", "I2", "I3", "OPERATORS", "Traverse", "languages", "render", "samplers_left"]
