"""The LLM layer: settings, the client (cache, DB record, concurrency), the batch backend, vLLM serving.

The orchestrator gets a job's client with `client_for_job(job)`; strategies call
`llm.generate([ChatRequest, ...])` and get one `LLMReply` per request (text, call_id).
"""
from __future__ import annotations

from typing import Callable, Mapping

from sqlalchemy.orm import Session

from evo.llm.batch import BatchPending
from evo.llm.client import ChatRequest, LLMClient, LLMReply
from evo.llm.settings import LLMSettings, load_settings


def client_for_job(job, session_factory: Callable[[], Session] | None = None, *, model: str | None = None,
                   base_url: str | None = None, env: Mapping[str, str] | None = None) -> LLMClient:
    """The client for one job (a strategies.base.JobInfo). Settings come from the environment /
    EVO_LLM_CONFIG; the job may pin `model` and `base_url` (Job.llm_model, Job.llm_endpoint) and
    set "temperature" / "max_tokens" in its config. Raises db.session.ConfigError when unusable."""
    if session_factory is None:
        from db.session import get_sessionmaker

        session_factory = get_sessionmaker()
    config = job.config or {}
    settings = load_settings(env, model=model or config.get("llm_model"), base_url=base_url or config.get("llm_endpoint"),
                             temperature=config.get("temperature"), max_tokens=config.get("max_tokens"))
    return LLMClient(settings, session_factory, job_id=job.id, env=env)


__all__ = ["BatchPending", "ChatRequest", "LLMClient", "LLMReply", "LLMSettings", "client_for_job", "load_settings"]
