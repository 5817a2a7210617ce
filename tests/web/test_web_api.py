"""The JSON API against a real database (SQLite and PostgreSQL): reads, errors, pagination."""
from __future__ import annotations

import pytest


def test_list_jobs_paginates_newest_first(client, data):
    first = client.get("/api/jobs", params={"limit": 1, "task": "softmax"}).json()
    assert first["total"] >= 1 and first["items"][0]["task"] == "softmax"
    both = client.get("/api/jobs", params={"state": "running", "task": "rmsnorm"}).json()
    assert [j["id"] for j in both["items"]] == [data["job_b"]] and both["next_offset"] is None
    page1 = client.get("/api/jobs", params={"limit": 1}).json()
    page2 = client.get("/api/jobs", params={"limit": 1, "offset": page1["next_offset"]}).json()
    assert page1["total"] >= 2 and page1["next_offset"] == 1
    assert page1["items"][0]["id"] > page2["items"][0]["id"]  # newest first, no overlap


def test_job_detail_has_progress_and_curve(client, data):
    job = client.get(f"/api/jobs/{data['job_a']}").json()
    assert job["state"] == "done" and job["best_candidate_id"] == data["fastest"]
    # 5 members: 4 finished (3 correct, 1 compile error), 1 pending.
    assert (job["proposed"], job["evaluated"], job["valid"]) == (5, 4, 3)
    assert job["valid_rate"] == pytest.approx(0.75)
    assert job["best_speedup_eager"] == pytest.approx(2.0) and job["best_runtime_ms"] == pytest.approx(0.15)
    gens = {g["generation"]: g for g in job["generations"]}
    assert sorted(gens) == [0, 1, 2]
    assert (gens[1]["proposed"], gens[1]["evaluated"], gens[1]["valid"]) == (2, 2, 1)
    assert gens[1]["best_speedup_eager"] == pytest.approx(1.5) and gens[1]["valid_rate"] == pytest.approx(0.5)
    assert (gens[2]["proposed"], gens[2]["evaluated"], gens[2]["best_candidate_id"]) == (2, 1, data["fastest"])
    llm_job = client.get(f"/api/jobs/{data['job_b']}").json()
    assert (llm_job["llm_model"], llm_job["llm_endpoint"], llm_job["state"]) == ("qwen3-coder", "http://llm.local/v1", "running")
    listed = client.get("/api/jobs", params={"task": "softmax", "state": "done"}).json()["items"]
    assert {j["id"]: j["valid"] for j in listed} == {data["job_a"]: 3}


def test_job_population(client, data):
    page = client.get(f"/api/jobs/{data['job_a']}/candidates", params={"limit": 3}).json()
    assert page["total"] == 5 and page["next_offset"] == 3
    assert [m["generation"] for m in page["items"]] == [0, 1, 1]
    rest = client.get(f"/api/jobs/{data['job_a']}/candidates", params={"limit": 3, "offset": 3}).json()
    assert {m["candidate_id"]: m["status"] for m in rest["items"]} == {data["fastest"]: "correct", data["pending"]: "pending"}
    assert rest["items"][0]["parent_ids"] == [data["fast"]]


def test_leaderboard_ranks_correct_kernels_per_task_and_gpu(client, data):
    rows = client.get("/api/leaderboard", params={"task": "softmax"}).json()
    assert [r["candidate_id"] for r in rows] == [data["fastest"], data["fast"], data["seed"]]
    top = rows[0]
    assert (top["rank"], top["device"], top["strategy"], top["job_id"]) == (1, "NVIDIA H200", "tune", data["job_a"])
    assert top["speedup_eager"] == pytest.approx(2.0) and top["speedup_compile"] == pytest.approx(1.6)
    assert top["sol_fraction"] == pytest.approx(0.05 / 0.15)
    everything = client.get("/api/leaderboard").json()
    by_group = {(r["task"], r["device"]) for r in everything}
    assert by_group == {("softmax", "NVIDIA H200"), ("rmsnorm", "NVIDIA H200"), ("rmsnorm", "cpu-interpreter")}
    assert not {data["broken"], data["pending"]} & {r["candidate_id"] for r in everything}
    gpu = client.get("/api/leaderboard", params={"task": "rmsnorm", "gpu": "NVIDIA H200"}).json()
    assert [(r["candidate_id"], r["llm_model"], r["operator"]) for r in gpu] == [
        (data["rms_llm"], "qwen3-coder", "mutation"), (data["rms_seed"], "qwen3-coder", "seed")]
    one = client.get("/api/leaderboard", params={"task": "softmax", "per_task": 1}).json()
    assert [r["candidate_id"] for r in one] == [data["fastest"]]


def test_candidate_detail_and_source(client, data):
    c = client.get(f"/api/candidates/{data['fast']}").json()
    assert "def entry(x)" in c["source"] and c["task"] == "softmax"
    assert c["evaluations"][0]["status"] == "correct" and c["evaluations"][0]["timings"][0]["median_ms"] == 0.2
    assert c["jobs"] == [{"job_id": data["job_a"], "strategy": "tune", "generation": 1, "operator": "tune",
                          "parent_ids": [data["seed"]], "llm_call_id": None, "island": None}]
    assert sorted(c["child_ids"]) == sorted([data["fastest"], data["pending"]])
    text = client.get(f"/api/candidates/{data['fast']}/source")
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    assert text.text == c["source"] and f"softmax_{data['fast']}.py" in text.headers["content-disposition"]
    winner = client.get(f"/api/jobs/{data['job_a']}/source")
    assert winner.text == client.get(f"/api/candidates/{data['fastest']}/source").text


@pytest.mark.parametrize("path, status, message", [
    ("/api/jobs/999999", 404, "no job 999999"),
    ("/api/jobs/999999/candidates", 404, "no job 999999"),
    ("/api/candidates/999999", 404, "no candidate 999999"),
    ("/api/candidates/999999/source", 404, "no candidate 999999"),
    ("/api/jobs/abc", 422, "job_id"),
    ("/api/jobs/0", 422, "greater than or equal to 1"),
    ("/api/jobs/99999999999999", 422, "less than or equal"),
    ("/api/jobs?limit=0", 422, "limit"),
    ("/api/jobs?limit=1000", 422, "limit"),
    ("/api/jobs?offset=-1", 422, "offset"),
    ("/api/jobs?state=sleeping", 422, "state"),
    ("/api/leaderboard?task=soft%00max", 422, "task"),
    ("/api/nothing-here", 404, "not found: GET /api/nothing-here"),
])
def test_bad_reads_get_json_errors(client, path, status, message):
    r = client.get(path)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    assert message in r.json()["error"]


def test_job_without_winner_has_no_source(client, session_factory):
    from db.models import Job
    with session_factory() as s:
        job = Job(task="softmax", strategy="tune", budget=1)
        s.add(job)
        s.commit()
    r = client.get(f"/api/jobs/{job.id}/source")
    assert r.status_code == 404 and "no valid candidate yet" in r.json()["error"]


def test_openapi_schema_documents_the_api(client):
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) >= {"/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/cancel", "/api/leaderboard",
                                    "/api/candidates/{candidate_id}", "/api/candidates/{candidate_id}/source"}
    assert not any(p == "/" or p.startswith("/jobs") for p in schema["paths"])  # pages stay out of the API schema
    post = schema["paths"]["/api/jobs"]["post"]
    assert post["security"] == [{"HTTPBearer": []}] and "401" in post["responses"]
    assert "get" in schema["paths"]["/api/jobs"] and "security" not in schema["paths"]["/api/jobs"]["get"]


def test_candidate_in_many_jobs_shows_the_latest(client, session_factory, data, monkeypatch):
    """A seed belongs to every job of its task: the detail lists the latest MAX_JOBS and counts all."""
    from sqlalchemy import delete

    from db.models import Job, JobCandidate
    from evo.web import queries
    monkeypatch.setattr(queries, "MAX_JOBS", 2)
    with session_factory() as s:
        jobs = [Job(task="softmax", strategy="tune", budget=1, state="done") for _ in range(3)]
        s.add_all(jobs)
        s.flush()
        s.add_all(JobCandidate(job_id=j.id, candidate_id=data["seed"], generation=0, operator="seed") for j in jobs)
        s.commit()
    c = client.get(f"/api/candidates/{data['seed']}").json()
    assert c["job_count"] >= 4 and [j["job_id"] for j in c["jobs"]] == [jobs[1].id, jobs[2].id]
    with session_factory() as s:  # leave the shared data as it was
        ids = [j.id for j in jobs]
        s.execute(delete(JobCandidate).where(JobCandidate.job_id.in_(ids)))
        s.execute(delete(Job).where(Job.id.in_(ids)))
        s.commit()
