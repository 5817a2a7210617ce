"""Elite preservation: (mu+lambda) truncation by runtime, rank-based parent selection."""
from __future__ import annotations

import random
from dataclasses import dataclass

from evo.population.single_best import fitness_key
from evo.strategies.base import Member


def rank_probabilities(n: int) -> list[float]:
    """p(r) ∝ 1/(r + N) for ranks r = 0..N-1 (0 = fastest): a mild preference for the best."""
    weights = [1.0 / (r + n) for r in range(n)]
    total = sum(weights)
    return [w / total for w in weights]


@dataclass(frozen=True)
class Elite:
    size: int = 5

    def population(self, history: list[Member]) -> list[Member]:
        """The `size` fastest valid members (parents and children alike compete: mu+lambda),
        padded with the most recent invalid ones when too few are valid."""
        valid = sorted((m for m in history if m.valid), key=fitness_key)[: self.size]
        if len(valid) < self.size:
            invalid = sorted((m for m in history if not m.valid), key=lambda m: (m.generation, m.candidate_id),
                             reverse=True)
            valid += invalid[: self.size - len(valid)]
        return valid

    def select(self, history: list[Member], rng: random.Random, k: int) -> tuple[Member, ...]:
        """k distinct parents by rank (fewer if the population is smaller)."""
        population = self.population(history)
        chosen: list[Member] = []
        while population and len(chosen) < k:
            probs = rank_probabilities(len(population))
            pick = rng.choices(range(len(population)), weights=probs)[0]
            chosen.append(population.pop(pick))
        return tuple(chosen)
