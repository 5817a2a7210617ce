"""The AI CUDA Engineer's pipeline on this engine: first translate the PyTorch reference
into a kernel from scratch (I1: the task and its reference, no kernel shown), then evolve:
crossover prompts over a random few of the top-5 kernels so far (I1 with the current best +
I2 with the top-5). Not here: its retrieval of related kernels of other tasks from an
archive (a strategy sees only its own job's history).
"""
from __future__ import annotations

import random

from evo.population import Elite
from evo.strategies.base import JobInfo, Member, Proposal
from evo.traverse import I1, I2, Ask, Traverse, languages, samplers_left

TOP = 5


class AICudaEngineer:
    name = "ai-cuda-engineer"
    uses_llm = True
    translate = Traverse(frozenset({I1}), anchor=None)
    evolve = Traverse(frozenset({I1, I2}))

    def propose(self, job: JobInfo, history: list[Member], rng: random.Random, llm) -> list[Proposal]:
        n = samplers_left(job, job.config.get("samplers", 4))
        if not any(m.valid and m.operator != "seed" for m in history):
            return self.translate.propose(job, history, [Ask("translate", (), lang) for lang in languages(job, n)],
                                          rng, llm)
        top = [m for m in Elite(TOP).population(history) if m.valid]
        asks = []
        for lang in languages(job, n):
            parents = rng.sample(top, min(len(top), rng.choice((2, 3))))
            asks.append(Ask("crossover", tuple(sorted(parents, key=lambda m: (m.runtime_ms, m.candidate_id))), lang))
        return self.evolve.propose(job, history, asks, rng, llm, top)
