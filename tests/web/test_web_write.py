"""Writes through the API: the token, submitting (with and without a broker), cancelling."""
from __future__ import annotations

import base64
import json
import os
import time

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from db.models import Job
from evo.web import create_app

REDIS_DB = 13  # this file's own Redis database: the queue it inspects is not shared


@pytest.fixture
def no_env(monkeypatch):
    for name in ("EVO_API_TOKEN", "EVO_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_client(session_factory, no_env, token):
    return lambda **kw: TestClient(create_app(session_factory, **{"api_token": token, **kw}))


JOB = {"task": "softmax", "strategy": "tune", "budget": 3}


@pytest.mark.parametrize("headers, status, message", [
    ({}, 401, "Authorization: Bearer"),
    ({"Authorization": "Bearer wrong"}, 403, "invalid API token"),
    ({"Authorization": "Basic dXNlcjpwdw=="}, 401, "Authorization: Bearer"),
])
def test_writes_need_the_token(make_client, headers, status, message):
    client = make_client()
    for path in ("/api/jobs", "/api/jobs/1/cancel"):
        r = client.post(path, json=JOB, headers=headers)
        assert r.status_code == status and message in r.json()["error"]
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"


def test_server_without_token_is_read_only(session_factory, no_env):
    client = TestClient(create_app(session_factory))
    r = client.post("/api/jobs", json=JOB, headers={"Authorization": "Bearer anything"})
    assert r.status_code == 403 and "no EVO_API_TOKEN" in r.json()["error"]
    assert client.get("/api/jobs").status_code == 200


def test_submit_without_broker_leaves_job_queued(make_client, auth, session_factory):
    r = make_client().post("/api/jobs", json={**JOB, "config": {"seed": 7}}, headers=auth)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["enqueued"] is False and "EVO_BROKER_URL" in body["note"] and f"evo resume {body['id']}" in body["note"]
    assert (body["state"], body["task"], body["budget"], body["proposed"]) == ("queued", "softmax", 3, 0)
    with session_factory() as s:
        job = s.get(Job, body["id"])
        assert (job.state, job.strategy, job.config) == ("queued", "tune", {"seed": 7})


def test_submit_enqueues_the_start_task(make_client, auth):
    base = os.environ.get("EVO_TEST_REDIS_URL")
    if not base:
        pytest.skip("EVO_TEST_REDIS_URL is not set")
    url = make_url(base.replace("redis://", "redis+x://", 1))  # borrow SQLAlchemy's URL parser for host/port
    broker = f"redis://{url.host}:{url.port or 6379}/{REDIS_DB}"
    queue = redis.Redis.from_url(broker)
    queue.delete("control")
    try:
        r = make_client(broker_url=broker).post("/api/jobs", json=JOB, headers=auth)
        assert r.status_code == 201 and r.json()["enqueued"] is True and r.json()["note"] is None
        messages = [json.loads(m) for m in queue.lrange("control", 0, -1)]
        assert [m["headers"]["task"] for m in messages] == ["evo.orchestrate.start"]
        args, _kwargs, _options = json.loads(base64.b64decode(messages[0]["body"]))
        assert args == [r.json()["id"]]
    finally:
        queue.delete("control")


def test_submit_with_unreachable_broker_answers_quickly(make_client, auth):
    started = time.monotonic()
    r = make_client(broker_url="redis://127.0.0.1:1/0").post("/api/jobs", json=JOB, headers=auth)
    assert time.monotonic() - started < 5
    assert r.status_code == 201 and r.json()["enqueued"] is False and r.json()["state"] == "queued"
    assert "broker did not take the job" in r.json()["note"]


@pytest.mark.parametrize("body, message", [
    ({**JOB, "task": "no-such-task"}, "unknown task 'no-such-task'"),
    ({**JOB, "strategy": "magic"}, "unknown strategy 'magic'"),
    ({**JOB, "language": "rust"}, "language: Input should be"),
    ({**JOB, "budget": 0}, "budget: Input should be greater than or equal to 1"),
    ({**JOB, "budget": "many"}, "budget: Input should be a valid integer"),
    ({**JOB, "surprise": 1}, "surprise: Extra inputs are not permitted"),
    ({**JOB, "llm_model": "a\x00b"}, "NUL characters are not allowed"),
    ({**JOB, "config": {"seed": "x"}}, "config seed must be an integer"),
    ({"strategy": "tune"}, "task: Field required"),
    ([1, 2], "Input should be a valid dictionary"),
])
def test_bad_submissions_get_422_and_write_nothing(make_client, auth, session_factory, body, message):
    with session_factory() as s:
        before = s.query(Job).count()
    r = make_client().post("/api/jobs", json=body, headers=auth)
    assert r.status_code == 422 and message in r.json()["error"], r.text
    with session_factory() as s:
        assert s.query(Job).count() == before


def test_malformed_json_is_422(make_client, auth):
    r = make_client().post("/api/jobs", content=b"{not json", headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["error"]


def test_cancel(make_client, auth, session_factory, data):
    with session_factory() as s:
        job = Job(task="softmax", strategy="tune", budget=2, state="running")
        s.add(job)
        s.commit()
    client = make_client()
    r = client.post(f"/api/jobs/{job.id}/cancel", headers=auth)
    assert r.status_code == 200 and r.json()["state"] == "cancelled" and r.json()["finished_at"]
    assert client.post(f"/api/jobs/{job.id}/cancel", headers=auth).json()["state"] == "cancelled"  # idempotent
    done = client.post(f"/api/jobs/{data['job_a']}/cancel", headers=auth)
    assert done.status_code == 409 and "already ended (done)" in done.json()["error"]
    assert client.post("/api/jobs/999999/cancel", headers=auth).status_code == 404
    with session_factory() as s:
        assert s.get(Job, job.id).state == "cancelled" and s.get(Job, data["job_a"]).state == "done"
