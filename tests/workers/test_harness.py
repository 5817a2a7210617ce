"""Every fixture candidate gets the right verdict from one Evaluator on the CPU interpreter,
and the Evaluator keeps working after timeouts, crashes and memory blow-ups."""
from pathlib import Path

import pytest

from workers.harness.static_checks import check
from workers.protocol import CPU_DEVICE
from workers.sandbox import Evaluator, Timeouts

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]
SEED = (REPO / "kernels" / "softmax.py").read_text()
# Short limits: interpreter calls at small shapes take milliseconds; a slow shared CI machine
# still finishes the first call (the compile phase) of a correct candidate well inside 10 s.
TIMEOUTS = Timeouts(start=120, compile=10, verify=60, baselines=120, time=120)


def fixture(name: str) -> str:
    return (FIXTURES / f"{name}.py").read_text()


@pytest.fixture(scope="module")
def evaluator():
    ev = Evaluator(timeouts=TIMEOUTS)
    yield ev
    ev.close()


def test_seed_is_correct_and_timed_on_the_interpreter(evaluator):
    r = evaluator.evaluate("softmax", SEED)
    assert r.status == "correct", r.error
    assert r.device == CPU_DEVICE and r.error is None
    assert r.timings and all(t.dtype == "float32" and t.n >= 3 and t.median_ms > 0 for t in r.timings)
    assert r.runtime_ms > 0 and r.speedup_seed is not None
    assert r.timings[0].sol_ms is None and r.sol_fraction is None  # no GPU ceilings for the interpreter
    assert {"compile", "verify", "baselines", "time"} <= r.phases.keys()


@pytest.mark.parametrize("name, status, words", [
    ("wrong_odd_shapes", "incorrect", ["out of tolerance", "first at index", "got", "expected", "max abs error"]),
    ("nan_output", "incorrect", ["NaN"]),
    ("writes_inputs", "incorrect", ["wrote into its input argument 0"]),
    ("cached_result", "incorrect", ["seed 1", "out of tolerance"]),
    ("uninitialized_output", "incorrect", ["out of tolerance"]),
    ("wrong_shape", "incorrect", ["shape (51,)", "expected (3, 17)"]),
    ("wrong_dtype", "incorrect", ["torch.float64", "expected torch.float32"]),
    ("forbidden_direct", "rejected", ["torch.softmax", "forbids"]),
    ("forbidden_alias", "rejected", ["torch.nn.functional.softmax", "forbids"]),
    ("starts_thread", "rejected", ["imports threading"]),
    ("patches_timer", "rejected", ["torch.cuda.Event.elapsed_time"]),
    ("syntax_error", "compile_error", ["syntax error at line 5"]),
    ("missing_entry", "compile_error", ["no callable `entry"]),
])
def test_fixture_verdict(evaluator, name, status, words):
    r = evaluator.evaluate("softmax", fixture(name), time_it=False)
    assert r.status == status, r.error
    for word in words:
        assert word in r.error
    assert r.runtime_ms is None and not r.timings


def test_forbidden_op_reached_dynamically_is_caught_at_run_time(evaluator):
    source = fixture("forbidden_dynamic")
    assert check(source, ("torch.softmax", "torch.nn.functional.softmax")) == []  # the scan cannot see it
    evaluator.evaluate("softmax", SEED, time_it=False)
    pid = evaluator.pid
    r = evaluator.evaluate("softmax", source, time_it=False)
    assert r.status == "rejected" and "torch.nn.functional.softmax" in r.error
    assert evaluator.pid == pid  # calling a forbidden op alters nothing: the process stays


def test_endless_loop_times_out_and_the_next_evaluation_works(evaluator):
    before = evaluator.evaluate("softmax", SEED, time_it=False)
    pid = evaluator.pid
    r = evaluator.evaluate("softmax", fixture("infinite_loop"), time_it=False)
    assert r.status == "timeout" and "hard limit of 10 s" in r.error
    assert evaluator.pid is None  # killed with its process group
    after = evaluator.evaluate("softmax", SEED, time_it=False)
    assert before.status == after.status == "correct"
    assert evaluator.pid not in (None, pid) and "start" in after.phases


def test_segfault_is_a_runtime_error_and_the_next_evaluation_works(evaluator):
    r = evaluator.evaluate("softmax", fixture("crash_out_of_bounds"), time_it=False)
    assert r.status == "runtime_error"
    assert "SIGSEGV" in r.error and "candidate.py" in r.error
    assert evaluator.evaluate("softmax", SEED, time_it=False).status == "correct"


def test_memory_blowup_is_a_clear_runtime_error_and_the_process_survives(evaluator):
    evaluator.evaluate("softmax", SEED, time_it=False)
    pid = evaluator.pid
    r = evaluator.evaluate("softmax", fixture("too_much_memory"), time_it=False)
    assert r.status == "runtime_error" and "allocates far too much memory" in r.error
    assert evaluator.evaluate("softmax", SEED, time_it=False).status == "correct"
    assert evaluator.pid == pid  # a refused allocation does not need a new process


def test_runtime_patching_is_rejected_and_replaces_the_process(evaluator):
    source = fixture("patches_timer_dynamic")
    assert check(source) == []  # the scan cannot resolve the patched name
    evaluator.evaluate("softmax", SEED, time_it=False)
    pid = evaluator.pid
    r = evaluator.evaluate("softmax", source, time_it=False)
    assert r.status == "rejected" and "patched torch.cuda.synchronize" in r.error
    assert evaluator.evaluate("softmax", SEED, time_it=False).status == "correct"
    assert evaluator.pid != pid


def test_cuda_compile_error_reports_nvcc_message(evaluator):
    r = evaluator.evaluate("softmax", fixture("cuda_compile_error"), "cuda")
    assert r.status == "compile_error"
    assert 'identifier "undeclared_helper" is undefined' in r.error and "candidate.cu(6)" in r.error


def test_cuda_candidate_that_compiles_is_never_called_correct_without_a_gpu(evaluator):
    r = evaluator.evaluate("softmax", fixture("cuda_ok"), "cuda")
    assert r.compile_only and r.status != "correct"
    assert "neither run, verified nor timed" in r.error and r.runtime_ms is None


@pytest.mark.parametrize("task", ["add_rmsnorm", "argmax", "rmsnorm"])
def test_other_seeds_pass(evaluator, task):
    """Tuple outputs (add_rmsnorm), integer outputs (argmax) and a second float op."""
    import importlib.util
    from baselines import get_task
    source = Path(importlib.util.find_spec(get_task(task).seed).origin).read_text()
    r = evaluator.evaluate(task, source, time_it=False)
    assert r.status == "correct", r.error


def test_bad_input_raises(evaluator):
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        evaluator.evaluate("nope", SEED)
    with pytest.raises(ValueError, match="unknown language"):
        evaluator.evaluate("softmax", SEED, "fortran")
    assert evaluator.evaluate("softmax", SEED, time_it=False).status == "correct"


def test_start_spawns_the_evaluation_process_before_the_first_evaluation():
    """Warm start (a Celery GPU worker calls start() when its pool process starts): start()
    returns at once, and the process it spawned gives the first verdict."""
    with Evaluator(timeouts=TIMEOUTS) as ev:
        assert ev.pid is None
        ev.start()
        pid = ev.pid
        assert pid is not None and ev.device == CPU_DEVICE
        ev.start()  # a running process is kept
        assert ev.pid == pid
        r = ev.evaluate("softmax", SEED, time_it=False)
        assert r.status == "correct" and "start" in r.phases and ev.pid == pid, r.error
        assert "start" not in ev.evaluate("softmax", SEED, time_it=False).phases
