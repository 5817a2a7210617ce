"""Population managers: survival and selection properties, over random histories."""
import random
from collections import Counter

import pytest

from evo.population import Elite, Islands, SingleBest, rank_probabilities
from evo.strategies.base import Member

STATUSES = ["correct", "correct", "compile_error", "incorrect", "runtime_error"]


def member(cid, generation=1, runtime=None, status=None, island=None, operator="mutation", source=None):
    status = status or ("correct" if runtime is not None else "compile_error")
    return Member(candidate_id=cid, source=source or f"# candidate {cid}\n", language="triton", generation=generation,
                  operator=operator, parent_ids=(), status=status, runtime_ms=runtime if status == "correct" else None,
                  island=island)


def random_history(rng, n, islands=None):
    history = [member(1, 0, runtime=1.0, operator="seed")]
    for cid in range(2, n + 2):
        status = rng.choice(STATUSES)
        history.append(member(cid, generation=1 + (cid - 2) // 4, status=status,
                              runtime=rng.uniform(0.1, 2.0) if status == "correct" else None,
                              island=rng.randrange(islands) if islands else None))
    return history


def test_single_best_is_the_fastest_valid_and_ties_go_to_the_earlier():
    history = [member(1, 0, 1.0, operator="seed"), member(2, runtime=0.5), member(3, runtime=0.5),
               member(4, status="incorrect", runtime=0.1), member(5)]
    assert SingleBest().best(history).candidate_id == 2
    assert SingleBest().population(history) == [history[1]]
    assert SingleBest().best([member(9)]) is None


@pytest.mark.parametrize("seed", range(20))
def test_elitism_never_loses_the_best_valid(seed):
    rng = random.Random(seed)
    elite = Elite(size=5)
    history = []
    best_so_far = None
    for cid in range(1, 40):
        status = rng.choice(STATUSES)
        history.append(member(cid, status=status, runtime=rng.uniform(0.1, 2.0) if status == "correct" else None))
        valid = [m for m in history if m.valid]
        if valid:
            best_so_far = min(valid, key=lambda m: m.runtime_ms)
        population = elite.population(history)
        assert len(population) == min(5, len(history))
        if best_so_far:
            assert best_so_far in population
            assert population[0] == best_so_far
        # Truncation: no valid member outside the population is faster than one inside it.
        inside = [m.runtime_ms for m in population if m.valid]
        outside = [m.runtime_ms for m in valid if m not in population]
        if outside:
            assert max(inside) <= min(outside) and len(inside) == 5


def test_elite_pads_with_the_most_recent_invalid():
    history = [member(1, 0, 1.0, operator="seed"), member(2, 1), member(3, 1), member(4, 2), member(5, 2, 0.7),
               member(6, 3)]
    population = Elite(size=4).population(history)
    assert [m.candidate_id for m in population] == [5, 1, 6, 4]


def test_rank_probabilities_follow_one_over_rank_plus_n():
    probs = rank_probabilities(5)
    assert probs == pytest.approx([(1 / (r + 5)) / sum(1 / (k + 5) for k in range(5)) for r in range(5)])
    assert sum(probs) == pytest.approx(1.0) and probs == sorted(probs, reverse=True)


def test_rank_selection_picks_by_those_probabilities():
    history = [member(i, runtime=float(i)) for i in range(1, 6)]  # rank = i - 1
    rng = random.Random(0)
    draws = Counter(Elite(5).select(history, rng, 1)[0].candidate_id for _ in range(20000))
    for rank, p in enumerate(rank_probabilities(5)):
        assert draws[rank + 1] / 20000 == pytest.approx(p, abs=0.015)


def test_selected_parents_are_distinct_and_few_when_the_population_is_small():
    history = [member(i, runtime=float(i)) for i in range(1, 6)]
    rng = random.Random(1)
    for _ in range(100):
        pair = Elite(5).select(history, rng, 2)
        assert len(pair) == 2 and pair[0] != pair[1]
    assert len(Elite(5).select(history[:1], rng, 2)) == 1


# --- islands ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(10))
def test_islands_stay_isolated_until_migration(seed):
    rng = random.Random(seed)
    islands = Islands(count=5, reset_period=0)  # no resets: no migration at all
    history = random_history(rng, 60, islands=5)
    contents = islands.islands(history, generation=20)
    for i, members in enumerate(contents):
        for m in members:
            assert m.operator == "seed" or m.island == i  # nothing from another island
            assert m.valid  # only valid programs enter
        assert {m.candidate_id for m in members if m.operator != "seed"} == {
            m.candidate_id for m in history if m.island == i and m.valid}


def test_reset_refounds_the_weaker_half_from_a_survivor():
    islands = Islands(count=4, reset_period=3)
    seed = member(1, 0, 10.0, operator="seed")
    history = [seed, member(2, 1, 1.0, island=0), member(3, 2, 2.0, island=1), member(4, 1, 5.0, island=2),
               member(5, 2, 8.0, island=3), member(6, 3, 0.5, island=3)]  # 6 arrives after the reset at 3
    before = Islands(count=4, reset_period=0).islands(history, generation=3)
    assert [sorted(m.candidate_id for m in isl) for isl in before] == [[1, 2], [1, 3], [1, 4], [1, 5]]
    after = islands.islands(history, generation=4)
    # Islands 2 and 3 (best 5.0 and 8.0) were the weaker half: each restarted from the best of island 0 or 1.
    assert sorted(m.candidate_id for m in after[0]) == [1, 2] and sorted(m.candidate_id for m in after[1]) == [1, 3]
    for i in (2, 3):
        founders = [m for m in after[i] if m.generation < 3]
        assert len(founders) == 1 and founders[0].candidate_id in (2, 3)
    assert 6 in [m.candidate_id for m in after[3]]  # children after the reset join their (new) island
    assert 4 not in [m.candidate_id for isl in after for m in isl]  # the weak island's programs are gone
    assert islands.islands(history, generation=4) == after  # rebuilt the same from the same history


def test_island_sampling_prefers_fast_clusters_and_sorts_worst_to_best():
    members = [member(1, runtime=1.0), member(2, runtime=1.005), member(3, runtime=2.0), member(4, runtime=4.0)]
    rng = random.Random(0)
    firsts = Counter()
    for _ in range(3000):
        versions = Islands(temperature=0.1).sample(members, rng, k=2)
        assert len(versions) == 2 and versions[0].runtime_ms >= versions[1].runtime_ms  # v0 worse, v1 better
        assert {versions[0].candidate_id, versions[1].candidate_id} != {1, 2}  # 1 and 2 are one cluster
        firsts[versions[1].candidate_id] += 1
    assert firsts[1] + firsts[2] > 0.9 * 3000  # the fast cluster is almost always in
    assert firsts[4] == 0  # the slowest can only ever be v0


def test_within_a_cluster_shorter_programs_are_preferred():
    short = member(1, runtime=1.0, source="x = 1\n")
    long = member(2, runtime=1.0, source="x = 1\n" + "# padding\n" * 200)
    rng = random.Random(0)
    picks = Counter(Islands().sample([short, long], rng, k=1)[0].candidate_id for _ in range(2000))
    assert picks[1] > picks[2] * 1.5
