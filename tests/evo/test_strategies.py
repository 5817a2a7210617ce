"""Each LLM strategy runs a small softmax job end to end: the fake OpenAI server answers
(with kernels, broken kernels and prose), the real LLM client records every call, the real
Evaluator checks every candidate on the CPU interpreter. The generation loop here is the
orchestrator's, minus Celery and the job tables: propose, charge the budget, evaluate
each new source once, feed the verdicts back as history."""
import random
import re
from pathlib import Path

import pytest
from sqlalchemy import select

from db.models import LLMCall
from evo.llm import LLMClient, load_settings
from evo.llm.client import api_seed
from evo.strategies import STRATEGIES, JobInfo, Member, get_strategy
from tests.evo.fake_openai import FakeOpenAI, Reply
from workers.protocol import content_hash

SEED = (Path(__file__).parents[2] / "kernels" / "softmax.py").read_text()
WARPS = [1, 2, 4, 16]
LAYER_HEADINGS = {"I1": "## Task: softmax", "I2": "## Earlier solutions", "I3": "## Optimization insights"}
LAYERS = {"evoengineer-free": {"I1"}, "evoengineer-insight": {"I1", "I3"}, "evoengineer-full": {"I1", "I2", "I3"},
          "eoh": {"I1", "I2"}, "funsearch": {"I1", "I2"}, "ai-cuda-engineer": {"I1", "I2"}}
LLM_STRATEGIES = [name for name in STRATEGIES if name != "tune"]


def kernel_reply(n: int) -> Reply:
    """The n-th answer: mostly a correct variant of the seed, sometimes a wrong kernel or prose."""
    if n % 5 == 3:
        return Reply("I would fuse the two passes with an online softmax, but I need to think more.")
    source = SEED.replace("NUM_WARPS = 8", f"NUM_WARPS = {WARPS[n % 4]}") + f"\n# variant {n}\n"
    if n % 5 == 2:  # forgets to normalize: runs, but the verifier must reject it
        source = source.replace("y = e / tl.sum(e, axis=0)", "y = e")
    return Reply(f"NAME: variant {n}\nTHOUGHT: marker-thought-{n}: use {WARPS[n % 4]} warps per row.\n\n"
                 f"```python\n{source}```\n")


# The sampling seed the client sends identifies the sample: (job seed, generation, index) -> n.
SAMPLE_NUMBER = {api_seed(f"seed={seed}/gen={g}/sample={i}"): (g - 1) * 4 + i
                 for seed in (11, 12) for g in range(1, 10) for i in range(4)}


def reply_by_sample(body: dict, n: int) -> Reply:
    """The same sample always gets the same answer, however the concurrent requests arrive."""
    return kernel_reply(SAMPLE_NUMBER[body["seed"]])


@pytest.fixture(scope="module")
def evaluate():
    """One evaluation process for the module; a source is evaluated once (as the service does)."""
    from workers.sandbox import Evaluator

    results = {}
    with Evaluator() as evaluator:
        def evaluate(source):
            key = content_hash(source, "softmax")
            if key not in results:
                results[key] = evaluator.evaluate("softmax", source, "triton")
            return results[key]

        yield evaluate


def run_job(strategy_name, server, session_factory, evaluate, budget=8, language="triton", seed=11):
    """The orchestrator's loop in miniature. Returns (members, proposals per generation)."""
    strategy = get_strategy(strategy_name)
    llm = LLMClient(load_settings(server.env()), session_factory)
    seed_result = evaluate(SEED)
    members = [Member(1, SEED, "triton", 0, "seed", (), seed_result.status, seed_result.runtime_ms,
                      name="seed (triton)", speedup_eager=seed_result.speedup_eager,
                      timings=tuple(t.model_dump() for t in seed_result.timings))]
    by_hash = {content_hash(SEED, "softmax"): 1}
    calls_used, generations = 0, []
    for generation in range(1, 20):
        job = JobInfo(id=1, task="softmax", strategy=strategy_name, language=language, budget=budget,
                      calls_used=calls_used, generation=generation, config={"seed": seed}, device="cpu-interpreter")
        proposals = strategy.propose(job, members, random.Random(f"{seed}:{generation}"), llm)
        if not proposals:
            break
        generations.append(proposals)
        calls_used += sum(p.llm_call_id is not None for p in proposals)
        for p in proposals:
            if p.source is None or content_hash(p.source, "softmax") in by_hash:
                continue
            result = evaluate(p.source)
            cid = len(members) + 1
            by_hash[content_hash(p.source, "softmax")] = cid
            members.append(Member(cid, p.source, p.language, generation, p.operator, p.parent_ids, result.status,
                                  result.runtime_ms, error=result.error, name=p.name, thought=p.thought,
                                  speedup_eager=result.speedup_eager, sol_fraction=result.sol_fraction,
                                  timings=tuple(t.model_dump() for t in result.timings), island=p.island))
    return members, generations


def user_prompt(request: dict) -> str:
    return next(m["content"] for m in request["messages"] if m["role"] == "user")


@pytest.mark.parametrize("name", LLM_STRATEGIES)
def test_strategy_runs_a_job_end_to_end(name, session_factory, evaluate):
    with FakeOpenAI(reply_by_sample) as server:
        members, generations = run_job(name, server, session_factory, evaluate, budget=8)
    # The budget is spent exactly, 4 samplers per generation, every call recorded and linked.
    assert [len(g) for g in generations] == [4, 4]
    proposals = [p for g in generations for p in g]
    with session_factory() as s:
        rows = s.scalars(select(LLMCall).order_by(LLMCall.id)).all()
    assert len(rows) == len(server.requests) == 8
    assert sorted(p.llm_call_id for p in proposals) == [r.id for r in rows]
    # Replies became candidates, except prose, which is recorded with its reason.
    prose = [p for p in proposals if p.source is None]
    assert prose and all("no code block" in p.error for p in prose)
    statuses = {m.status for m in members}
    assert "correct" in statuses and "incorrect" in statuses  # the verifier caught the broken variant
    llm_made = [m for m in members if m.operator != "seed"]
    assert all(m.name.startswith("variant ") and m.thought.startswith("marker-thought-") for m in llm_made)
    # The prompts carry exactly the strategy's layers.
    for request in server.requests:
        prompt = user_prompt(request)
        for layer, heading in LAYER_HEADINGS.items():
            if name == "ai-cuda-engineer" and layer == "I2" and "Translate the PyTorch reference" in prompt:
                assert heading not in prompt  # its first stage translates from the task alone
                continue
            assert (heading in prompt) == (layer in LAYERS[name]), (layer, prompt[:200])
        # Thoughts travel only as I3 insights.
        assert ("marker-thought-" in prompt) == ("I3" in LAYERS[name] and "Ideas from earlier attempts" in prompt)
    later = [user_prompt(r) for r in server.requests[4:]]
    if "I3" in LAYERS[name]:
        assert all("marker-thought-" in p for p in later)
        assert any("incorrect: shape" in p and "out of tolerance" in p for p in later)  # the verifier's feedback
    if "I2" in LAYERS[name] and name != "funsearch":  # funsearch's islands may not have a child yet
        assert any("variant " in p for p in later)  # the second generation builds on the first


def test_operators_follow_each_strategy(session_factory, evaluate):
    operators = {}
    for name in LLM_STRATEGIES:
        with FakeOpenAI(reply_by_sample) as server:
            _, generations = run_job(name, server, session_factory, evaluate, budget=12)
        operators[name] = [sorted(p.operator for p in g) for g in generations]
    assert operators["evoengineer-free"] == [["improve"] * 4] * 3
    assert operators["evoengineer-insight"] == [["improve"] * 4] * 3
    full = operators["evoengineer-full"]
    assert full[0] == ["init"] * 4 and full[-1] == ["crossover", "crossover", "mutation", "mutation"]
    assert operators["eoh"][0] == ["e1"] * 4 and operators["eoh"][-1] == ["e1", "e2", "m1", "m2"]
    assert operators["funsearch"] == [["funsearch"] * 4] * 3
    assert operators["ai-cuda-engineer"][0] == ["translate"] * 4 and operators["ai-cuda-engineer"][-1] == ["crossover"] * 4


def test_funsearch_children_carry_their_island(session_factory, evaluate):
    with FakeOpenAI(reply_by_sample) as server:
        members, generations = run_job("funsearch", server, session_factory, evaluate, budget=8)
    assert all(p.island is not None and 0 <= p.island < 5 for g in generations for p in g)
    versions = [len(re.findall(r"^### v\d", user_prompt(r), re.M)) for r in server.requests]
    assert versions[:4] == [1, 1, 1, 1]  # only the seed on every island at first
    assert max(versions) <= 2


def test_replay_the_same_job_with_the_cache_gives_the_same_candidates(session_factory, evaluate):
    """The fake server answers by arrival order, so only the reply cache can make a rerun equal."""
    with FakeOpenAI(lambda body, n: kernel_reply(n)) as server:
        first_members, first = run_job("evoengineer-full", server, session_factory, evaluate, budget=8)
        sent = len(server.requests)
        again_members, again = run_job("evoengineer-full", server, session_factory, evaluate, budget=8)
        assert len(server.requests) == sent == 8  # nothing was asked twice

        def summary(generations):
            return [[(p.source, p.operator, p.parent_ids, p.name) for p in g] for g in generations]

        assert summary(again) == summary(first)
        assert [m.source for m in again_members] == [m.source for m in first_members]
        other_members, _ = run_job("evoengineer-full", server, session_factory, evaluate, budget=8, seed=12)
        assert len(server.requests) == 16  # another seed is another job: fresh samples
        assert [m.source for m in other_members] != [m.source for m in first_members]
    with session_factory() as s:
        cached = s.scalars(select(LLMCall.cached).order_by(LLMCall.id)).all()
    assert cached == [False] * 8 + [True] * 8 + [False] * 8


def test_a_job_for_both_languages_asks_for_triton_and_cuda(session_factory):
    cuda = (Path(__file__).parent / "llm" / "replies" / "cuda_cupy.txt").read_text()
    with FakeOpenAI(lambda body, n: Reply(cuda) if "CUDA_SOURCE" in body["messages"][0]["content"]
                    else kernel_reply(0)) as server:
        llm = LLMClient(load_settings(server.env()), session_factory)
        seed = Member(1, SEED, "triton", 0, "seed", (), "correct", 1.0)
        job = JobInfo(1, "softmax", "evoengineer-free", "both", 45, 0, 1, {"seed": 1}, "cpu-interpreter")
        proposals = get_strategy("evoengineer-free").propose(job, [seed], random.Random(0), llm)
    assert [p.language for p in proposals] == ["cuda", "triton", "cuda", "triton"]
    assert all(p.source is not None for p in proposals), [p.error for p in proposals]
    assert all("CUDA_SOURCE" in p.source for p in proposals if p.language == "cuda")


def test_a_spent_budget_proposes_nothing(session_factory):
    job = JobInfo(1, "softmax", "evoengineer-full", "triton", 8, 8, 3, {}, "cpu-interpreter")
    for name in LLM_STRATEGIES:
        assert get_strategy(name).propose(job, [], random.Random(0), llm=None) == []


