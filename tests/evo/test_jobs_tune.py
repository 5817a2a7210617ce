"""The `tune` strategy and the tunables parser it shares with the engine."""
import random
from pathlib import Path

import pytest

from evo.strategies import JobInfo, Member, get_strategy
from evo.strategies.tune import neighbours, parse_tunables, set_tunables
from workers.protocol import content_hash

SEED = (Path(__file__).resolve().parents[2] / "kernels" / "softmax.py").read_text()


def job(budget=10, used=0, samplers=3):
    return JobInfo(id=1, task="softmax", strategy="tune", language="triton", budget=budget, calls_used=used,
                   generation=1, config={"samplers": samplers})


def member(cid, source, runtime, status="correct"):
    return Member(candidate_id=cid, source=source, language="triton", generation=0, operator="seed",
                  parent_ids=(), status=status, runtime_ms=runtime if status == "correct" else None)


def test_parse_and_set_tunables_round_trip():
    t = parse_tunables(SEED)
    assert list(t) == ["MAX_SINGLE_BLOCK", "LOOP_BLOCK", "NUM_WARPS"]
    assert t["NUM_WARPS"].value == 8 and t["NUM_WARPS"].choices == (2, 4, 8, 16)
    changed = set_tunables(SEED, {"NUM_WARPS": 4, "LOOP_BLOCK": 1024})
    t2 = parse_tunables(changed)
    assert (t2["NUM_WARPS"].value, t2["LOOP_BLOCK"].value, t2["MAX_SINGLE_BLOCK"].value) == (4, 1024, 8192)
    assert "NUM_WARPS = 4  # tunable: 2, 4, 8, 16" in changed
    # Only the tunable lines changed.
    assert [a for a, b in zip(SEED.splitlines(), changed.splitlines()) if a != b] == [
        "LOOP_BLOCK = 4096  # tunable: 1024, 2048, 4096, 8192", "NUM_WARPS = 8  # tunable: 2, 4, 8, 16"]


def test_tunables_bad_input():
    with pytest.raises(KeyError, match="NOPE"):
        set_tunables(SEED, {"NOPE": 1})
    with pytest.raises(ValueError, match="not a Python literal"):
        parse_tunables("X = foo(1)  # tunable: 1, 2\n")
    assert parse_tunables("X = 1\n") == {}


def test_neighbours_are_adjacent_choices():
    t = parse_tunables("A = 2  # tunable: 1, 2, 4\nB = 'x'  # tunable: 'x', 'y'\n")
    assert neighbours(t) == [{"A": 1}, {"A": 4}, {"B": "y"}]


def test_tune_hill_climbs_from_the_best_without_repeats():
    slow = set_tunables(SEED, {"NUM_WARPS": 2})
    history = [member(1, SEED, 1.0), member(2, slow, 3.0), member(3, set_tunables(SEED, {"NUM_WARPS": 16}), None,
                                                                   status="compile_error")]
    tune = get_strategy("tune")
    proposals = tune.propose(job(samplers=3), history, random.Random(7), None)
    assert len(proposals) == 3
    seen = {content_hash(m.source, "softmax") for m in history}
    hashes = [content_hash(p.source, "softmax") for p in proposals]
    assert len(set(hashes)) == 3 and not seen & set(hashes)
    # Neighbours of the best (candidate 1) come first, one tunable moved one step.
    assert all(p.parent_ids == (1,) and p.operator == "tune" for p in proposals)
    for p in proposals:
        before, after = parse_tunables(SEED), parse_tunables(p.source)
        moved = [k for k in before if before[k].value != after[k].value]
        assert len(moved) == 1
        k = moved[0]
        assert abs(before[k].choices.index(after[k].value) - before[k].choices.index(before[k].value)) == 1


def test_tune_is_deterministic_and_respects_budget():
    history = [member(1, SEED, 1.0)]
    tune = get_strategy("tune")
    a = tune.propose(job(samplers=4), history, random.Random(3), None)
    b = tune.propose(job(samplers=4), history, random.Random(3), None)
    assert [p.source for p in a] == [p.source for p in b]
    assert len(tune.propose(job(budget=10, used=8, samplers=4), history, random.Random(3), None)) == 2
    assert tune.propose(job(budget=10, used=10), history, random.Random(3), None) == []


def test_tune_stops_without_a_valid_member_or_when_exhausted():
    tune = get_strategy("tune")
    assert tune.propose(job(), [member(1, SEED, None, status="incorrect")], random.Random(0), None) == []
    tiny = "A = 1  # tunable: 1, 2\n"
    history = [member(1, tiny, 1.0), member(2, set_tunables(tiny, {"A": 2}), 2.0)]
    assert tune.propose(job(), history, random.Random(0), None) == []
