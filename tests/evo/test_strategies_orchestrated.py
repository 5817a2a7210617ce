"""An LLM strategy through the whole service: the orchestrator on a control worker asks the
fake OpenAI server (through evo.llm.client_for_job), a CPU evaluation worker verifies and
times each candidate, the job ends when its LLM budget is spent. Then the same job again:
every reply comes from the cache and the job proposes the same candidates."""
from sqlalchemy import select

from db.models import Candidate, Evaluation, Job, JobCandidate, LLMCall
from db.session import session_scope
from evo.jobs import submit_job
from tests.evo.fake_openai import FakeOpenAI
from tests.evo.test_strategies import kernel_reply

REDIS_DB = 9  # this file's own Redis database


def run(cluster, poll, seed=3, budget=8):
    with session_scope(cluster.db_url) as s:
        job_id = submit_job(s, "softmax", "evoengineer-full", budget, config={"seed": seed, "samplers": 4},
                            celery_app=cluster.app).id
    poll(lambda: _state(cluster, job_id) in ("done", "failed"), 240, f"job {job_id} to finish\n{cluster.log_tail()}")
    return job_id


def _state(cluster, job_id):
    with session_scope(cluster.db_url) as s:
        return s.get(Job, job_id).state


def members(cluster, job_id):
    with session_scope(cluster.db_url) as s:
        return s.execute(select(JobCandidate.generation, JobCandidate.operator, JobCandidate.candidate_id,
                                JobCandidate.llm_call_id).where(JobCandidate.job_id == job_id)
                         .order_by(JobCandidate.generation, JobCandidate.candidate_id)).all()


def test_evoengineer_full_through_the_service_and_its_replay(cluster, poll):
    with FakeOpenAI(lambda body, n: kernel_reply(n)) as server:
        for name, queues in (("control", "control,cpu"), ("gpu", "gpu")):
            cluster.start_worker(name, queues, EVO_LLM_BASE_URL=server.base_url, EVO_LLM_MODEL="fake-model",
                                 EVO_LLM_API_KEY="test", EVO_LLM_MAX_RETRIES="1")
        first = run(cluster, poll)
        assert len(server.requests) == 8
        second = run(cluster, poll)
        assert len(server.requests) == 8  # the replay asked the server nothing

    with session_scope(cluster.db_url) as s:
        job = s.get(Job, first)
        assert job.state == "done" and job.calls_used == 8 and job.best_candidate_id is not None, job.error
        calls = s.scalars(select(LLMCall).where(LLMCall.job_id == first).order_by(LLMCall.id)).all()
        assert len(calls) == 8 and not any(c.cached for c in calls)
        assert all(c.model == "fake-model" and c.prompt[1]["content"].startswith("## Task: softmax") for c in calls)
        verdicts = dict(s.execute(select(Evaluation.candidate_id, Evaluation.status)
                                  .where(Evaluation.device == "cpu-interpreter")).all())
        thoughts = s.scalars(select(Candidate.thought).where(Candidate.thought.is_not(None))).all()
        assert s.get(Job, second).calls_used == 8
        cached = s.scalars(select(LLMCall.cached).where(LLMCall.job_id == second)).all()
    assert cached == [True] * 8
    first_members, second_members = members(cluster, first), members(cluster, second)
    # Generation 0 is the seed; the LLM's candidates carry their call; prose replies made none.
    assert [m.operator for m in first_members if m.generation == 0] == ["seed"]
    llm_made = [m for m in first_members if m.generation > 0]
    assert 4 <= len(llm_made) < 8 and all(m.llm_call_id in {c.id for c in calls} for m in llm_made)
    assert {m.operator for m in llm_made if m.generation == 1} == {"init"}
    assert all(verdicts[m.candidate_id] in ("correct", "incorrect") for m in first_members)
    assert "incorrect" in {verdicts[m.candidate_id] for m in llm_made}
    assert any(t.startswith("marker-thought-") for t in thoughts)
    # The prose reply of generation 1 made no candidate; its reason is on its call and in
    # every generation-2 prompt's feedback (requests 4-7).
    [prose] = [c for c in calls if c.reply.startswith("I would fuse")]
    assert prose.error and "code" in prose.error
    assert all("gave no kernel to evaluate" in body["messages"][1]["content"] and prose.error in
               body["messages"][1]["content"] for body in server.requests[4:8])
    # The replay proposes the very same candidates in the same generations.
    assert [(g, op, c) for g, op, c, _ in second_members] == [(g, op, c) for g, op, c, _ in first_members]


def test_a_job_on_the_batch_backend_waits_and_resumes(cluster, poll, tmp_path):
    """No endpoint reachable from the workers: the generation's requests go to a JSONL file,
    the job stays running with a note that says what to do, replies are produced elsewhere,
    and resuming the jobs waiting on that directory continues it."""
    from evo.jobs import is_waiting, resume_waiting_jobs
    from evo.llm import LLMClient, load_settings
    from evo.llm.batch import pending, run_pending
    from db.session import get_sessionmaker

    batch = tmp_path / "batch"
    for name, queues in (("control", "control,cpu"), ("gpu", "gpu")):
        cluster.start_worker(name, queues, EVO_LLM_MODEL="fake-model", EVO_LLM_BATCH_DIR=str(batch))
    with session_scope(cluster.db_url) as s:
        job_id = submit_job(s, "softmax", "evoengineer-full", 4, config={"seed": 3, "samplers": 4},
                            celery_app=cluster.app).id

    def waiting():
        with session_scope(cluster.db_url) as s:
            job = s.get(Job, job_id)
            assert job.state == "running" or job.state == "queued", (job.state, job.error)
            return is_waiting(job.state, job.error)
    poll(waiting, 240, f"job {job_id} to wait for batch replies\n{cluster.log_tail()}")
    with session_scope(cluster.db_url) as s:
        job = s.get(Job, job_id)
        assert job.error == (f"waiting for 4 batch replies in {batch}; run `evo llm batch run {batch}` "
                             f"(or `evo llm batch submit` / `fetch`), then `evo resume {job_id}`")
        assert job.calls_used == 0 and job.generation == 0  # nothing of generation 1 written
    assert len(pending(batch)) == 4 and len(members(cluster, job_id)) == 1

    with FakeOpenAI(lambda body, n: kernel_reply(n)) as server:
        run_pending(batch, LLMClient(load_settings(server.env()), get_sessionmaker(cluster.db_url)))
    with session_scope(cluster.db_url) as s:
        assert resume_waiting_jobs(s, tmp_path / "elsewhere", celery_app=cluster.app) == []
        assert [job.id for job in resume_waiting_jobs(s, batch, celery_app=cluster.app)] == [job_id]
    poll(lambda: _state(cluster, job_id) in ("done", "failed"), 240, f"job {job_id} to finish\n{cluster.log_tail()}")
    with session_scope(cluster.db_url) as s:
        job = s.get(Job, job_id)
        assert job.state == "done" and job.calls_used == 4 and job.error is None, job.error
        calls = s.scalars(select(LLMCall).where(LLMCall.job_id == job_id)).all()
    assert len(calls) == 4 and all(c.endpoint == f"batch:{batch}" for c in calls)
    assert len([m for m in members(cluster, job_id) if m.generation == 1]) == 3  # one reply was prose
