"""The LLM layer against a real HTTP server speaking the OpenAI API, through the real openai client."""
import json
import sys
import textwrap

import pytest
from sqlalchemy import select

from db.models import Job, LLMCall
from db.session import ConfigError
from evo.llm import BatchPending, ChatRequest, LLMClient, client_for_job, load_settings
from evo.llm.batch import pending, run_pending
from evo.llm.client import api_seed
from evo.llm.prices import cost_usd, price_for
from evo.strategies.base import JobInfo
from tests.evo.fake_openai import FakeOpenAI, Reply, rate_limited, server_error

MESSAGES = ({"role": "system", "content": "stable part"}, {"role": "user", "content": "write a kernel"})


def requests(n, prefix="gen=1"):
    return [ChatRequest(MESSAGES, key=f"{prefix}/sample={i}") for i in range(n)]


def calls(session_factory):
    with session_factory() as s:
        return s.scalars(select(LLMCall).order_by(LLMCall.id)).all()


# --- settings ----------------------------------------------------------------------------------

def test_settings_from_environment():
    s = load_settings({"EVO_LLM_BASE_URL": "http://gpu1:8000/v1/", "EVO_LLM_MODEL": "Qwen/Qwen3-32B",
                       "EVO_LLM_TEMPERATURE": "0.7", "EVO_LLM_MAX_TOKENS": "4096", "EVO_LLM_TIMEOUT": "60",
                       "EVO_LLM_MAX_RETRIES": "2", "EVO_LLM_CONCURRENCY": "8", "EVO_LLM_CACHE": "0"})
    assert [(e.base_url, e.model) for e in s.endpoints] == [("http://gpu1:8000/v1", "Qwen/Qwen3-32B")]
    assert (s.temperature, s.max_tokens, s.timeout, s.max_retries, s.concurrency, s.cache) == (0.7, 4096, 60, 2, 8, False)


def test_settings_from_a_toml_file_with_weighted_endpoints(tmp_path):
    config = tmp_path / "llm.toml"
    config.write_text(textwrap.dedent("""
        temperature = 0.5
        concurrency = 2
        [[endpoints]]
        base_url = "http://gpu1:8000/v1"
        model = "local"
        weight = 3
        [[endpoints]]
        model = "gpt-4.1"
        api_key_env = "MY_KEY"
    """))
    s = load_settings({"EVO_LLM_CONFIG": str(config), "EVO_LLM_TEMPERATURE": "0.9", "MY_KEY": "sk-1"})
    assert s.temperature == 0.9  # the environment overrides the file
    assert s.concurrency == 2
    assert [(e.model, e.weight) for e in s.endpoints] == [("local", 3), ("gpt-4.1", 1)]
    assert s.endpoints[1].base_url == "https://api.openai.com/v1"
    assert s.endpoints[1].key({"MY_KEY": "sk-1"}) == "sk-1"


def test_a_job_pins_its_endpoint_and_model(tmp_path):
    config = tmp_path / "llm.json"
    config.write_text(json.dumps({"endpoints": [{"base_url": "http://gpu1:8000/v1", "model": "a", "api_key": "k1"},
                                                {"base_url": "http://gpu2:8000/v1", "model": "b"}]}))
    env = {"EVO_LLM_CONFIG": str(config)}
    pinned = load_settings(env, base_url="http://gpu1:8000/v1/")
    assert [(e.base_url, e.model, e.api_key) for e in pinned.endpoints] == [("http://gpu1:8000/v1", "a", "k1")]
    other = load_settings(env, base_url="http://gpu3:8000/v1", model="c")
    assert [(e.base_url, e.model) for e in other.endpoints] == [("http://gpu3:8000/v1", "c")]
    assert [e.model for e in load_settings(env, model="c").endpoints] == ["c", "c"]
    with pytest.raises(ConfigError, match="endpoints.0.model"):
        load_settings(env, base_url="http://gpu3:8000/v1")  # a new server, but which model?


@pytest.mark.parametrize("env, message", [
    ({}, "no LLM endpoint"),
    ({"EVO_LLM_BASE_URL": "http://x:1/v1"}, "EVO_LLM_MODEL is not"),
    ({"EVO_LLM_MODEL": "m", "EVO_LLM_TEMPERATURE": "hot"}, "temperature"),
    ({"EVO_LLM_MODEL": "m", "EVO_LLM_CONCURRENCY": "0"}, "concurrency"),
    ({"EVO_LLM_MODEL": "m", "EVO_LLM_BASE_URL": "gpu1:8000"}, "http://"),
    ({"EVO_LLM_CONFIG": "/nonexistent/llm.toml"}, "cannot read"),
])
def test_bad_settings_are_one_clear_error(env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


def test_price_table():
    assert price_for("gpt-4.1-2025-04-14", "https://api.openai.com/v1") == (2.0, 8.0)
    assert price_for("openai/gpt-4.1-mini", "https://openrouter.ai/api/v1") == (0.4, 1.6)
    assert price_for("some-new-model", "https://api.example.com/v1") is None  # unknown, not guessed
    assert price_for("gpt-4.1", "http://127.0.0.1:8000/v1") == (0.0, 0.0)  # a local server
    assert cost_usd((2.0, 8.0), 1_000_000, 500_000) == pytest.approx(6.0)
    assert cost_usd((2.0, 8.0), 1_000_000, 500_000, batch=True) == pytest.approx(3.0)


# --- calls, records, cache -------------------------------------------------------------------

def test_every_call_is_stored_with_tokens_latency_and_cost(session_factory):
    with FakeOpenAI(lambda body, n: Reply(f"answer to seed {body['seed']}")) as server:
        settings = load_settings(server.env(EVO_LLM_TEMPERATURE="0.3"))
        settings.endpoints[0].price_per_mtok = (2.0, 8.0)
        replies = LLMClient(settings, session_factory).generate(requests(3))
    # Sent concurrently, answered in any order: each reply still comes back in its request's place.
    assert [r.text for r in replies] == [f"answer to seed {api_seed(r.key)}" for r in requests(3)]
    rows = calls(session_factory)
    assert [r.id for r in rows] == [r.call_id for r in replies]
    for row, reply in zip(rows, replies):
        assert row.reply == reply.text and row.error is None and not row.cached
        assert row.prompt == list(MESSAGES) and row.model == "fake-model" and row.endpoint == server.base_url
        assert row.prompt_tokens > 0 and row.completion_tokens > 0 and row.latency_s > 0
        assert row.cost_usd == pytest.approx((row.prompt_tokens * 2 + row.completion_tokens * 8) / 1e6)
    sent = server.requests[0]
    assert sent["temperature"] == 0.3 and sent["messages"] == list(MESSAGES) and isinstance(sent["seed"], int)
    assert len({r["seed"] for r in server.requests}) == 3  # each sample its own sampling seed


def test_the_reply_cache_replays_without_calling(session_factory):
    with FakeOpenAI(lambda body, n: Reply(f"reply {n}")) as server:
        client = LLMClient(load_settings(server.env()), session_factory)
        first = client.generate(requests(2))
        again = client.generate(requests(2))
        assert len(server.requests) == 2  # the rerun was answered from the DB
        assert [r.text for r in again] == [r.text for r in first]
        assert all(r.cached for r in again) and not any(r.cached for r in first)
        other = client.generate(requests(1, prefix="gen=2"))  # a different sample is a new request
        assert len(server.requests) == 3 and not other[0].cached
        uncached = LLMClient(load_settings(server.env(EVO_LLM_CACHE="0")), session_factory).generate(requests(1))
        assert len(server.requests) == 4 and not uncached[0].cached
    rows = calls(session_factory)
    assert len(rows) == 6  # cached calls are recorded too (cost 0), so every proposal has its call
    assert [r.cost_usd for r in rows if r.cached] == [0.0, 0.0]


def test_rate_limits_and_server_errors_are_retried(session_factory):
    with FakeOpenAI() as server:
        server.script.extend([rate_limited(), server_error(), rate_limited()])
        [reply] = LLMClient(load_settings(server.env(EVO_LLM_MAX_RETRIES="3")), session_factory).generate(requests(1))
        assert reply.error is None and reply.text == "reply 3"
        assert len(server.requests) == 4


def test_retries_give_up_with_a_recorded_error(session_factory):
    with FakeOpenAI() as server:
        server.script.extend([rate_limited()] * 3)
        [reply] = LLMClient(load_settings(server.env(EVO_LLM_MAX_RETRIES="2")), session_factory).generate(requests(1))
        assert len(server.requests) == 3
    assert reply.text is None and "RateLimitError" in reply.error and "429" in reply.error
    [row] = calls(session_factory)
    assert row.reply is None and row.error == reply.error and row.id == reply.call_id


def test_a_slow_server_times_out_and_the_retry_succeeds(session_factory):
    with FakeOpenAI() as server:
        server.script.append(Reply("too late", delay_s=2.0))
        settings = load_settings(server.env(EVO_LLM_TIMEOUT="0.3", EVO_LLM_MAX_RETRIES="1"))
        [reply] = LLMClient(settings, session_factory).generate(requests(1))
        assert reply.text == "reply 1" and len(server.requests) == 2
        server.script.extend([Reply("too late", delay_s=2.0)] * 2)
        [failed] = LLMClient(settings, session_factory).generate(requests(1, prefix="gen=2"))
    assert failed.text is None and "APITimeoutError" in failed.error


def test_concurrency_is_limited(session_factory):
    with FakeOpenAI(lambda body, n: Reply(f"reply {n}", delay_s=0.2)) as server:
        client = LLMClient(load_settings(server.env(EVO_LLM_CONCURRENCY="2")), session_factory)
        replies = client.generate(requests(6))
    assert all(r.error is None for r in replies)
    assert server.max_in_flight == 2


def test_weighted_endpoints_share_the_load_and_route_reproducibly(session_factory, tmp_path):
    with FakeOpenAI() as heavy, FakeOpenAI() as light:
        config = tmp_path / "llm.json"
        config.write_text(json.dumps({"endpoints": [{"base_url": heavy.base_url, "model": "big", "weight": 3},
                                                    {"base_url": light.base_url, "model": "small", "weight": 1}]}))
        client = LLMClient(load_settings({"EVO_LLM_CONFIG": str(config)}), session_factory)
        replies = client.generate(requests(40))
        assert len(heavy.requests) + len(light.requests) == 40
        assert len(heavy.requests) > len(light.requests) > 0
        assert {r["model"] for r in heavy.requests} == {"big"} and {r["model"] for r in light.requests} == {"small"}
        routes = [client.endpoint_for(r).model for r in requests(40)]
        assert [r.model for r in replies] == routes  # the same request always goes to the same endpoint


def test_client_for_job_applies_the_jobs_model_and_temperature(session_factory):
    with FakeOpenAI() as server:
        with session_factory() as s:
            s.add(Job(id=7, task="softmax", strategy="evoengineer-free", budget=4))
            s.commit()
        job = JobInfo(id=7, task="softmax", strategy="evoengineer-free", language="triton", budget=4, calls_used=0,
                      generation=1, config={"temperature": 0.2})
        client = client_for_job(job, session_factory, model="pinned-model", env=server.env())
        client.generate(requests(1))
    assert server.requests[0]["model"] == "pinned-model" and server.requests[0]["temperature"] == 0.2
    assert calls(session_factory)[0].job_id == 7


# --- the batch backend -------------------------------------------------------------------------

def test_batch_backend_writes_batch_api_requests_and_reads_replies(session_factory, tmp_path):
    batch_dir = tmp_path / "batch"
    env = {"EVO_LLM_MODEL": "gpt-4.1", "EVO_LLM_BATCH_DIR": str(batch_dir)}
    client = LLMClient(load_settings(env), session_factory)
    with pytest.raises(BatchPending, match="2 LLM request"):
        client.generate(requests(2))
    with pytest.raises(BatchPending):
        client.generate(requests(2))  # asking again does not duplicate the pending lines
    lines = [json.loads(line) for line in (batch_dir / "requests.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    for line in lines:
        assert set(line) == {"custom_id", "method", "url", "body"}
        assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
        assert line["body"]["model"] == "gpt-4.1" and line["body"]["messages"] == list(MESSAGES)
    assert calls(session_factory) == []

    # Somewhere with network access: answer them (here: the fake server), as Batch API output.
    with FakeOpenAI() as server:
        runner = LLMClient(load_settings(server.env(EVO_LLM_MODEL="gpt-4.1")), session_factory)
        out = run_pending(batch_dir, runner)
    assert out.name.startswith("replies") and pending(batch_dir) == []
    output = [json.loads(line) for line in out.read_text().splitlines()]
    assert {o["custom_id"] for o in output} == {line["custom_id"] for line in lines}
    assert all(o["response"]["status_code"] == 200 and o["error"] is None for o in output)

    replies = client.generate(requests(2))
    assert sorted(r.text for r in replies) == ["reply 0", "reply 1"]
    rows = calls(session_factory)
    assert [r.endpoint for r in rows] == [f"batch:{batch_dir}"] * 2
    full = cost_usd((2.0, 8.0), rows[0].prompt_tokens, rows[0].completion_tokens)
    assert rows[0].cost_usd == pytest.approx(full / 2)  # the Batch API's discount
    assert all(r.cached for r in client.generate(requests(2)))


def test_batch_error_lines_become_failed_calls(session_factory, tmp_path):
    client = LLMClient(load_settings({"EVO_LLM_MODEL": "gpt-4.1", "EVO_LLM_BATCH_DIR": str(tmp_path)}),
                       session_factory)
    with pytest.raises(BatchPending):
        client.generate(requests(1))
    [line] = pending(tmp_path)
    (tmp_path / "replies-a.jsonl").write_text(json.dumps({
        "id": "batch_req_1", "custom_id": line["custom_id"], "response": None,
        "error": {"code": "batch_expired", "message": "This request could not be executed before the deadline"}}) + "\n")
    [reply] = client.generate(requests(1))
    assert reply.text is None and "batch_expired" in reply.error


# --- vLLM serving ---------------------------------------------------------------------------------

FAKE_VLLM = '''#!{python}
import http.server, json, sys
args = sys.argv[1:]
assert args[0] == "serve"
model, port = args[1], int(args[args.index("--port") + 1])
assert "--enable-prefix-caching" in args and args[args.index("--generation-config") + 1] == "vllm"
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        data = json.dumps({{"data": [{{"id": model}}]}}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(data))); self.end_headers()
        self.wfile.write(data)
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
'''


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_starts_vllm_and_waits_until_it_serves_the_model(tmp_path, monkeypatch):
    from evo.llm import serve

    exe = tmp_path / "bin" / "vllm"
    exe.parent.mkdir()
    exe.write_text(FAKE_VLLM.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{exe.parent}:{__import__('os').environ['PATH']}")
    process, base_url = serve.start("org/model-7b", port=free_port(), log=tmp_path / "vllm.log", timeout_s=30)
    try:
        import httpx

        assert httpx.get(f"{base_url}/models").json()["data"][0]["id"] == "org/model-7b"
    finally:
        serve.stop(process)
    assert process.poll() is not None


def test_serve_reports_a_crash_and_a_missing_vllm(tmp_path, monkeypatch):
    from evo.llm import serve

    exe = tmp_path / "vllm"
    exe.write_text("#!/bin/sh\necho 'CUDA out of memory' >&2\nexit 3\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(serve.ServeError, match="(?s)status 3.*CUDA out of memory"):
        serve.start("m", port=free_port(), log=tmp_path / "vllm.log", timeout_s=30)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(serve.ServeError, match="vllm is not installed"):
        serve.vllm_command("m")


def test_records_and_cache_on_postgresql(pg_session_factory):
    with FakeOpenAI() as server:
        client = LLMClient(load_settings(server.env()), pg_session_factory)
        first = client.generate(requests(2))
        again = client.generate(requests(2))
        assert len(server.requests) == 2
    assert [r.text for r in again] == [r.text for r in first] and all(r.cached for r in again)
    rows = calls(pg_session_factory)
    assert [r.cached for r in rows] == [False, False, True, True] and rows[0].prompt == list(MESSAGES)
