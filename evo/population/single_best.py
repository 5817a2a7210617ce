"""Greedy: keep the single best."""
from __future__ import annotations

from dataclasses import dataclass

from evo.strategies.base import Member


def fitness_key(m: Member) -> tuple[float, int]:
    """Lower runtime first; the earlier candidate wins a tie, so the order never depends on luck."""
    return (m.runtime_ms, m.candidate_id)


@dataclass(frozen=True)
class SingleBest:
    def best(self, history: list[Member]) -> Member | None:
        valid = [m for m in history if m.valid]
        return min(valid, key=fitness_key) if valid else None

    def population(self, history: list[Member]) -> list[Member]:
        best = self.best(history)
        return [best] if best else []
