"""Prompt building: layers, order (stable first), both languages, every operator's template."""
import random
from pathlib import Path

import pytest

from evo.strategies.base import JobInfo, Member
from evo.traverse import I1, I2, I3, OPERATORS, Ask, Traverse, languages, samplers_left
SEED_SOURCE = (Path(__file__).parents[2] / "kernels" / "softmax.py").read_text()
TIMINGS = ({"shape": {"M": 8192, "N": 4096}, "dtype": "bfloat16", "median_ms": 0.031, "speedup_eager": 1.4,
            "sol_fraction": 0.62},)


def job(language="triton", generation=2, **config):
    return JobInfo(id=1, task="softmax", strategy="evoengineer-full", language=language, budget=45, calls_used=4,
                   generation=generation, config={"seed": 5, **config}, device="NVIDIA H200")


SEED = Member(1, SEED_SOURCE, "triton", 0, "seed", (), "correct", 0.05, name="seed (triton)", speedup_eager=1.2,
              sol_fraction=0.5, timings=TIMINGS)
FAST = Member(2, "def entry(x):\n    return fast(x)\n", "triton", 1, "init", (), "correct", 0.03, name="online softmax",
              thought="THOUGHT-A: one pass with a running max", speedup_eager=2.0, timings=TIMINGS)
BROKEN = Member(3, "def entry(x):\n    return broken(x)\n", "triton", 1, "init", (), "compile_error", None,
                name="tma loads", thought="THOUGHT-B: use TMA descriptors",
                error="CompilationError: at 12:4: unsupported tensor descriptor")
HISTORY = [SEED, FAST, BROKEN]

SECTIONS = {I1: "## Task: softmax", I2: "## Earlier solutions", I3: "## Optimization insights"}


@pytest.mark.parametrize("layers", [{I1}, {I1, I3}, {I1, I2}, {I1, I2, I3}])
def test_a_prompt_carries_exactly_its_layers(layers):
    traverse = Traverse(frozenset(layers))
    system, user = traverse.messages(job(), HISTORY, Ask("mutation", (FAST,)), random.Random(0), HISTORY)
    for layer, heading in SECTIONS.items():
        assert (heading in user["content"]) == (layer in layers), layer
    text = system["content"] + user["content"]
    # I1's current best with its numbers, in every variant.
    assert "## Current best kernel: online softmax" in user["content"] and "0.03 ms" in user["content"]
    # The thoughts are I3 only, detached from code; the evaluator's errors too.
    assert ("THOUGHT-A" in text) == (I3 in layers)
    assert ("unsupported tensor descriptor" in text) == (I3 in layers)
    assert ("62% of the speed-of-light bound" in text) == (I3 in layers)
    # I2 shows the earlier solutions by name, with status and runtime.
    assert ("tma loads (#3, triton): compile_error" in text) == (I2 in layers)


def test_replies_without_code_reach_the_insights_layer():
    """A reply with no usable code made no candidate; its reason still reaches I3's feedback."""
    reason = "the reply has no ```python code block: send the whole Python module"
    unusable = JobInfo(**{**job().__dict__, "unusable_replies": (reason,)})
    for layers in ({I1, I3}, {I1}):
        _, user = Traverse(frozenset(layers)).messages(unusable, HISTORY, Ask("mutation", (FAST,)), random.Random(0))
        assert ("gave no kernel to evaluate" in user["content"] and reason in user["content"]) == (I3 in layers)
    _, user = Traverse(frozenset({I1, I3})).messages(job(), HISTORY, Ask("mutation", (FAST,)), random.Random(0))
    assert "gave no kernel to evaluate" not in user["content"]


def test_stable_parts_come_first():
    """vLLM's prefix cache: the system prompt is the same for every prompt of a job and
    language, and every user prompt starts with the same task context."""
    traverse = Traverse(frozenset({I1, I2, I3}))
    prompts = [traverse.messages(job(generation=g), HISTORY[:n], Ask(op, parents), random.Random(g))
               for g, n, op, parents in [(1, 1, "init", ()), (2, 3, "crossover", (FAST, SEED)), (3, 3, "mutation", (SEED,))]]
    assert len({system["content"] for system, _ in prompts}) == 1
    users = [user["content"] for _, user in prompts]
    task_context = users[0][: users[0].index("## Current best kernel")]
    assert len(task_context) > 500 and all(u.startswith(task_context) for u in users)
    for u in users:
        order = [u.index(h) for h in ("## Task: softmax", "## Current best kernel", "## Earlier solutions",
                                      "## Optimization insights", "## Your job")]
        assert order == sorted(order)


def test_the_cuda_prompt_explains_the_cupy_format():
    system, user = Traverse(frozenset({I1})).messages(job("cuda"), HISTORY, Ask("improve", (FAST,), "cuda"),
                                                      random.Random(0))
    for phrase in ('extern "C" __global__', "CUDA_SOURCE", "cupy.RawModule", "data_ptr()", "current_stream"):
        assert phrase in system["content"]
    assert "@triton.jit" not in system["content"] and "CUDA (CuPy)" in user["content"]
    triton_system, _ = Traverse(frozenset({I1})).messages(job(), HISTORY, Ask("improve", (FAST,)), random.Random(0))
    assert "@triton.jit" in triton_system["content"] and "CUDA_SOURCE" not in triton_system["content"]


def test_a_job_allowing_both_languages_alternates_them():
    assert languages(job("both", generation=1), 4) == ["cuda", "triton", "cuda", "triton"]
    assert languages(job("both", generation=2), 3) == ["triton", "cuda", "triton"]
    assert languages(job("cuda"), 2) == ["cuda", "cuda"]


def test_samplers_stop_at_the_budget():
    assert samplers_left(job(), 4) == 4
    assert samplers_left(JobInfo(1, "softmax", "eoh", "triton", 10, 8, 3), 4) == 2
    assert samplers_left(JobInfo(1, "softmax", "eoh", "triton", 10, 10, 3), 4) == 0


@pytest.mark.parametrize("operator", OPERATORS)
def test_every_operator_has_a_template_with_an_instruction(operator):
    _, user = Traverse(frozenset({I1, I2, I3})).messages(job(), HISTORY, Ask(operator, (SEED, FAST)), random.Random(0))
    instruction = user["content"].split("## Your job", 1)[1]
    assert len(instruction.strip()) > 60 and "Write the whole module in Triton" in instruction


def test_the_source_of_kernels_is_shown_verbatim():
    _, user = Traverse(frozenset({I1})).messages(job(), [SEED], Ask("improve", (SEED,)), random.Random(0))
    assert SEED_SOURCE.strip() in user["content"]  # blank lines inside code are kept


def test_insights_are_sampled_three_at_a_time():
    history = [SEED] + [Member(10 + i, "x", "triton", 1, "init", (), "correct", 1.0, thought=f"IDEA-{i}")
                        for i in range(6)]
    _, user = Traverse(frozenset({I1, I3})).messages(job(), history, Ask("improve", (SEED,)), random.Random(3))
    assert sum(f"IDEA-{i}" in user["content"] for i in range(6)) == 3


def test_funsearch_titles_and_eoh_baseline():
    funsearch = Traverse(frozenset({I1, I2}), anchor=None, parent_titles=("v0", "v1 (a better version of v0)"))
    _, user = funsearch.messages(job(), HISTORY, Ask("funsearch", (SEED, FAST)), random.Random(0))
    assert "### v0: seed (triton)" in user["content"] and "### v1 (a better version of v0): online softmax" in user["content"]
    assert "Current best kernel" not in user["content"] and "Write v2, an improved version of v1" in user["content"]
    eoh = Traverse(frozenset({I1, I2}), anchor="seed")
    _, user = eoh.messages(job(), HISTORY, Ask("m1", (FAST,)), random.Random(0))
    assert "## Baseline kernel: seed (triton)" in user["content"]


def test_bad_traverse_definitions_fail_clearly():
    with pytest.raises(ValueError, match="must include I1"):
        Traverse(frozenset({I2}))
    with pytest.raises(ValueError, match="no template for operator 'warp'"):
        Traverse(frozenset({I1})).messages(job(), HISTORY, Ask("warp"), random.Random(0))
