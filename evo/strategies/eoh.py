"""EoH (Evolution of Heuristics) on this engine: an elite population of 5, rank-selected
parents, four operators per generation — E1 (a totally different form), E2 (the parents'
common backbone, then something new), M1 (modify), M2 (new parameter settings). Prompts
show the task, the baseline (seed) kernel and the parents with their one-line
descriptions (I1 + I2); no sampled insights. Until two candidates are valid, every
sampler asks E1 of what there is.
"""
from __future__ import annotations

import random

from evo.population import Elite
from evo.strategies.base import JobInfo, Member, Proposal
from evo.traverse import I1, I2, Ask, Traverse, languages, samplers_left

OPERATORS = ("e1", "e2", "m1", "m2")
PARENTS = {"e1": 2, "e2": 2, "m1": 1, "m2": 1}


class EoH:
    name = "eoh"
    uses_llm = True
    traverse = Traverse(frozenset({I1, I2}), anchor="seed")

    def propose(self, job: JobInfo, history: list[Member], rng: random.Random, llm) -> list[Proposal]:
        n = samplers_left(job, job.config.get("samplers", len(OPERATORS)))
        elite = Elite(job.config.get("population", 5))
        if sum(m.valid for m in history) < 2:
            asks = [Ask("e1", elite.select(history, rng, 2), lang) for lang in languages(job, n)]
        else:
            asks = [Ask(op, elite.select(history, rng, PARENTS[op]), lang)
                    for op, lang in zip((OPERATORS * n)[:n], languages(job, n))]
        return self.traverse.propose(job, history, asks, rng, llm)
