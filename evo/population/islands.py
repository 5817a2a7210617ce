"""FunSearch's islands, rebuilt from the history each generation.

Each LLM child carries its island (JobCandidate.island); only valid children enter it. The
seed (island None) founds every island. Every `reset_period` generations the weaker half
of the islands (by their best runtime) is emptied and refounded with the best member of a
surviving island: the only way a program crosses from one island to another. Within an
island, programs are clustered by score (runtimes within 1% share a cluster); clusters
are sampled by a softmax over their score at a temperature, and within a cluster shorter
programs are preferred.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from evo.population.single_best import fitness_key
from evo.strategies.base import Member

CLUSTER_RESOLUTION = 0.01  # runtimes within 1% count as the same score signature


@dataclass(frozen=True)
class Islands:
    count: int = 5
    reset_period: int = 4  # generations between resets
    temperature: float = 0.1  # of the cluster softmax over log-speed: 10% slower -> ~0.4x as likely

    def resets(self, generation: int) -> list[int]:
        """Generations at whose start a reset happened, up to and including `generation`."""
        return list(range(self.reset_period, generation + 1, self.reset_period)) if self.reset_period > 0 else []

    def islands(self, history: list[Member], generation: int) -> list[list[Member]]:
        """Each island's members as of the start of `generation`."""
        seeds = [m for m in history if m.island is None and m.valid and m.operator == "seed"]
        islands: list[list[Member]] = [list(seeds) for _ in range(self.count)]

        def enter(start: int, stop: int) -> None:  # valid children of generations [start, stop), on their island
            for m in history:
                if m.valid and m.island is not None and 0 <= m.island < self.count and start <= m.generation < stop:
                    islands[m.island].append(m)

        start = 0
        for at in self.resets(generation):
            enter(start, at)
            islands = self._reset(islands, at)
            start = at
        enter(start, generation)
        return islands

    def _reset(self, islands: list[list[Member]], at: int) -> list[list[Member]]:
        def best_runtime(i: int) -> float:
            return min((m.runtime_ms for m in islands[i]), default=math.inf)

        order = sorted(range(self.count), key=lambda i: (best_runtime(i), i))  # strongest first
        keep, reset = order[: self.count - self.count // 2], order[self.count - self.count // 2:]
        new = [list(members) for members in islands]
        for i in reset:
            # A fixed draw per (reset, island): the same history always migrates the same founder.
            donor = random.Random(f"reset-{at}-{i}").choice(keep)
            founder = min(islands[donor], key=fitness_key, default=None)
            new[i] = [founder] if founder else []
        return new

    def sample(self, members: list[Member], rng: random.Random, k: int = 2) -> tuple[Member, ...]:
        """k programs from one island's clusters (distinct when possible), sorted worst to best."""
        if not members:
            return ()
        clusters: dict[int, list[Member]] = {}
        for m in members:
            clusters.setdefault(round(math.log(m.runtime_ms) / CLUSTER_RESOLUTION), []).append(m)
        keys = sorted(clusters)
        best = min(members, key=fitness_key).runtime_ms
        scores = [math.log(best / min(m.runtime_ms for m in clusters[c])) / self.temperature for c in keys]
        chosen: list[Member] = []
        while keys and len(chosen) < k:
            top = max(scores)
            pick = rng.choices(range(len(keys)), weights=[math.exp(s - top) for s in scores])[0]
            chosen.append(self._shortest_biased(clusters[keys.pop(pick)], rng))
            scores.pop(pick)
        return tuple(sorted(chosen, key=fitness_key, reverse=True))

    @staticmethod
    def _shortest_biased(cluster: list[Member], rng: random.Random) -> Member:
        cluster = sorted(cluster, key=lambda m: m.candidate_id)
        lengths = [len(m.source or "") for m in cluster]
        lo, hi = min(lengths), max(lengths)
        weights = [math.exp(-(n - lo) / (hi + 1e-6)) for n in lengths]
        return rng.choices(cluster, weights=weights)[0]
