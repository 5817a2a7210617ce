"""`evo llm ...` through typer's runner, against the fake server and a SQLite file."""
import json

import pytest
from typer.testing import CliRunner

from db.migrate import upgrade
from evo.cli import app
from evo.llm import BatchPending, ChatRequest, LLMClient, load_settings
from db.session import get_sessionmaker
from tests.evo.fake_openai import FakeOpenAI, rate_limited

runner = CliRunner()


@pytest.fixture
def database(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    upgrade(url)
    monkeypatch.setenv("EVO_DATABASE_URL", url)
    monkeypatch.setenv("EVO_HOME", str(tmp_path / "home"))
    for var in ("EVO_LLM_BASE_URL", "EVO_LLM_MODEL", "EVO_LLM_CONFIG", "EVO_LLM_BATCH_DIR"):
        monkeypatch.delenv(var, raising=False)
    return url


def test_calls_lists_recorded_calls_with_totals(database, monkeypatch):
    with FakeOpenAI() as server:
        client = LLMClient(load_settings(server.env()), get_sessionmaker(database))
        client.generate([ChatRequest(({"role": "user", "content": "hi"},), key=f"k{i}") for i in range(3)])
        client.generate([ChatRequest(({"role": "user", "content": "hi"},), key="k0")])
    result = runner.invoke(app, ["llm", "calls"])
    assert result.exit_code == 0, result.output
    assert "fake-model" in result.output
    assert "4 calls, 1 from the cache" in result.output


def test_check_reports_each_endpoint(database, monkeypatch):
    with FakeOpenAI() as good, FakeOpenAI() as bad:
        bad.script.extend([rate_limited()] * 3)
        config = {"max_retries": 0, "endpoints": [{"base_url": good.base_url, "model": "good"},
                                                  {"base_url": bad.base_url, "model": "bad"}]}
        path = database.removeprefix("sqlite:///").replace("cli.db", "llm.json")
        open(path, "w").write(json.dumps(config))
        monkeypatch.setenv("EVO_LLM_CONFIG", path)
        result = runner.invoke(app, ["llm", "check"], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "reply 0" in result.output and "RateLimitError" in result.output


def test_batch_status_and_run(database, tmp_path, monkeypatch):
    batch = tmp_path / "batch"
    queued = LLMClient(load_settings({"EVO_LLM_MODEL": "fake-model", "EVO_LLM_BATCH_DIR": str(batch)}),
                       get_sessionmaker(database))
    with pytest.raises(BatchPending):
        queued.generate([ChatRequest(({"role": "user", "content": "hi"},), key=f"k{i}") for i in range(2)])
    result = runner.invoke(app, ["llm", "batch", "status", str(batch)])
    assert result.exit_code == 0 and "2 requests, 0 answered" in result.output and "2 waiting" in result.output
    with FakeOpenAI() as server:
        for var, value in server.env().items():
            monkeypatch.setenv(var, value)
        result = runner.invoke(app, ["llm", "batch", "run", str(batch)])
        assert result.exit_code == 0, result.output
        assert len(server.requests) == 2
    assert "2 waiting" not in runner.invoke(app, ["llm", "batch", "status", str(batch)]).output
    assert len(queued.generate([ChatRequest(({"role": "user", "content": "hi"},), key=f"k{i}") for i in range(2)])) == 2


def test_serve_without_vllm_is_one_clear_error(database, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    result = runner.invoke(app, ["llm", "serve", "Qwen/Qwen3-8B"])
    assert result.exit_code == 2 and "vllm is not installed" in result.output


def test_bad_llm_settings_are_one_clear_error(database, monkeypatch):
    monkeypatch.setenv("EVO_LLM_MODEL", "m")
    monkeypatch.setenv("EVO_LLM_TIMEOUT", "soon")
    result = runner.invoke(app, ["llm", "check"])
    assert result.exit_code == 2 and "error: bad LLM settings: timeout" in result.output


def test_batch_submit_and_fetch_through_the_batch_api(database, tmp_path, monkeypatch):
    batch = tmp_path / "batch"
    queued = LLMClient(load_settings({"EVO_LLM_MODEL": "fake-model", "EVO_LLM_BATCH_DIR": str(batch)}),
                       get_sessionmaker(database))
    asks = [ChatRequest(({"role": "user", "content": "hi"},), key=f"k{i}") for i in range(3)]
    with pytest.raises(BatchPending):
        queued.generate(asks)
    with FakeOpenAI() as server:
        for var, value in server.env().items():
            monkeypatch.setenv(var, value)
        submitted = runner.invoke(app, ["llm", "batch", "submit", str(batch)])
        assert submitted.exit_code == 0 and "submitted batch batch_0" in submitted.output, submitted.output
        assert "nothing waits" in runner.invoke(app, ["llm", "batch", "submit", str(batch)]).output  # not twice
        fetched = runner.invoke(app, ["llm", "batch", "fetch", str(batch)])
        assert fetched.exit_code == 0 and "batch_0: completed" in fetched.output, fetched.output
        assert len(server.requests) == 3
    replies = queued.generate(asks)
    assert sorted(r.text for r in replies) == ["reply 0", "reply 1", "reply 2"]
