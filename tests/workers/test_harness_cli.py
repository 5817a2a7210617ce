"""`evo tasks` and `evo eval` as a user runs them (subprocesses)."""
import json
from pathlib import Path

from evo.cli.tasks import infer_language

FIXTURES = Path(__file__).parent / "fixtures"


def test_tasks_json_lists_the_tasks(cli):
    r = cli("tasks", "--json")
    assert r.returncode == 0, r.stderr
    tasks = {t["name"]: t for t in json.loads(r.stdout)}
    assert {"softmax", "rmsnorm"} <= tasks.keys()
    assert tasks["softmax"]["seed"] == "kernels.softmax" and "torch.softmax" in tasks["softmax"]["forbidden"]


def test_eval_json_prints_one_result(cli):
    r = cli("eval", "softmax", "kernels/softmax.py", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["status"] == "correct" and result["device"] == "cpu-interpreter"
    assert result["timings"] and result["timings"][0]["median_ms"] > 0


def test_eval_table_shows_the_verdict_and_exits_0_on_a_bad_candidate(cli):
    r = cli("eval", "softmax", str(FIXTURES / "nan_output.py"), "--no-time")
    assert r.returncode == 0, r.stderr
    assert "incorrect" in r.stdout and "NaN" in r.stdout


def test_bad_usage_exits_2_with_one_clear_line(cli):
    r = cli("eval", "no_such_task", "kernels/softmax.py")
    assert r.returncode == 2 and "unknown task 'no_such_task'" in r.stderr and "softmax" in r.stderr
    r = cli("eval", "softmax", "no/such/file.py")
    assert r.returncode == 2 and "no such file: no/such/file.py" in r.stderr


def test_language_inference():
    assert infer_language((FIXTURES / "cuda_ok.py").read_text()) == "cuda"
    assert infer_language((FIXTURES / "nan_output.py").read_text()) == "triton"
