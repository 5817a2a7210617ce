"""EvoEngineer's three variants: a traverse (which layers) + a population manager.

Free: I1, single best. Insight: I1 + I3, single best. Full: I1 + I2 + I3, elite population,
crossover and mutation (2 + 2 of the 4 samplers); first, fresh candidates until 2 are valid.
Job config knobs: samplers (4), population (5).
"""
from __future__ import annotations

import random

from evo.population import Elite, SingleBest
from evo.strategies.base import JobInfo, Member, Proposal
from evo.traverse import I1, I2, I3, Ask, Traverse, languages, samplers_left

SAMPLERS = 4
POPULATION = 5
INIT_VALID = 2  # Full asks for fresh candidates until this many LLM candidates are valid


class Free:
    name = "evoengineer-free"
    uses_llm = True
    traverse = Traverse(frozenset({I1}))

    def propose(self, job: JobInfo, history: list[Member], rng: random.Random, llm) -> list[Proposal]:
        n = samplers_left(job, job.config.get("samplers", SAMPLERS))
        best = SingleBest().best(history)
        asks = [Ask("improve", (best,) if best else (), lang) for lang in languages(job, n)]
        return self.traverse.propose(job, history, asks, rng, llm)


class Insight(Free):
    name = "evoengineer-insight"
    traverse = Traverse(frozenset({I1, I3}))


class Full:
    name = "evoengineer-full"
    uses_llm = True
    traverse = Traverse(frozenset({I1, I2, I3}))

    def propose(self, job: JobInfo, history: list[Member], rng: random.Random, llm) -> list[Proposal]:
        n = samplers_left(job, job.config.get("samplers", SAMPLERS))
        elite = Elite(job.config.get("population", POPULATION))
        population = elite.population(history)
        if sum(m.valid and m.operator != "seed" for m in history) < INIT_VALID:
            asks = [Ask("init", (), lang) for lang in languages(job, n)]
        else:
            asks = []
            for i, lang in enumerate(languages(job, n)):
                crossover = i % 2 == 0  # 4 samplers: crossover, mutation, crossover, mutation
                asks.append(Ask("crossover" if crossover else "mutation",
                                elite.select(history, rng, 2 if crossover else 1), lang))
        return self.traverse.propose(job, history, asks, rng, llm, population)
