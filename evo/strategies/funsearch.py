"""FunSearch on this engine: 5 islands of valid programs, clusters by score sampled at a
temperature (shorter programs preferred within a cluster), 2 prior versions per prompt
sorted worst to best ("v0", "v1"), the child asked for as the next version; the weaker
half of the islands reset every few generations. Layers: I1 (task) + I2 (the versions).
Job config knobs: samplers (4), islands (5), reset_period (4 generations).
"""
from __future__ import annotations

import random

from evo.population import Islands
from evo.strategies.base import JobInfo, Member, Proposal
from evo.traverse import I1, I2, Ask, Traverse, languages, samplers_left

VERSIONS = 2


class FunSearch:
    name = "funsearch"
    uses_llm = True
    traverse = Traverse(frozenset({I1, I2}), anchor=None, parent_titles=("v0", "v1 (a better version of v0)"))

    def propose(self, job: JobInfo, history: list[Member], rng: random.Random, llm) -> list[Proposal]:
        n = samplers_left(job, job.config.get("samplers", 4))
        islands = Islands(job.config.get("islands", 5), job.config.get("reset_period", 4))
        contents = islands.islands(history, job.generation)
        asks = []
        for lang in languages(job, n):
            island = rng.randrange(islands.count)
            asks.append(Ask("funsearch", islands.sample(contents[island], rng, VERSIONS), lang, island))
        return self.traverse.propose(job, history, asks, rng, llm)
