"""Population managers: who survives and who becomes a parent, computed from the job's
history alone (strategies are stateless, so a resumed job decides the same).

- SingleBest: the fastest valid candidate is the only parent (EvoEngineer Free/Insight).
- Elite: (mu+lambda) truncation by runtime, padded with the most recent invalid candidates,
  rank-based parent selection p(r) ∝ 1/(r+N) (EvoEngineer Full, EoH).
- Islands: FunSearch's islands of valid programs, clustered by score, periodic reset of the
  weaker half seeded from the survivors (the only migration).
A MAP-Elites manager would sit beside these: a grid keyed by descriptors (e.g. block size,
language) with the best member per cell.
"""
from evo.population.elite import Elite, rank_probabilities
from evo.population.islands import Islands
from evo.population.single_best import SingleBest, fitness_key

__all__ = ["Elite", "Islands", "SingleBest", "fitness_key", "rank_probabilities"]
