"""The LLM client the strategies call: OpenAI-compatible endpoints, a reply cache, every call in the DB.

`generate(requests)` answers a generation's prompts together: cached replies come from the
DB (LLMCall rows with the same request hash), the rest go out concurrently (a thread pool
of `concurrency` workers; the openai client does the timeouts and the retries with
exponential backoff on 429, 5xx and timeouts), and one row per request is written, cached
ones included, so each proposal can point at its call.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import openai
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import LLMCall
from evo.llm.batch import BatchBackend
from evo.llm.completion import Completion, completion_from
from evo.llm.prices import cost_usd, price_for
from evo.llm.settings import Endpoint, LLMSettings


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[dict, ...]  # [{"role": "system" | "user", "content": ...}], stable part first
    key: str  # what makes this sample distinct besides its prompt: job seed, generation, sample index


@dataclass(frozen=True)
class LLMReply:
    text: str | None
    call_id: int | None
    model: str
    cached: bool = False
    error: str | None = None  # the call failed (after retries): no reply


def api_seed(key: str) -> int:
    """The sampling seed sent with the request, so vLLM (which honours it) samples the same again."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") >> 1


def request_hash(model: str, messages: Sequence[dict], temperature: float, max_tokens: int, key: str) -> str:
    payload = json.dumps({"model": model, "messages": list(messages), "temperature": temperature,
                          "max_tokens": max_tokens, "key": key}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


class LLMClient:
    def __init__(self, settings: LLMSettings, session_factory: Callable[[], Session], *, job_id: int | None = None,
                 env: Mapping[str, str] | None = None):
        self.settings = settings
        self.session_factory = session_factory
        self.job_id = job_id
        self._env = os.environ if env is None else env
        self._clients: dict[str, openai.OpenAI] = {}
        self.batch = BatchBackend(settings.batch_dir) if settings.batch_dir else None

    # -- routing ------------------------------------------------------------------------------
    def endpoint_for(self, request: ChatRequest) -> Endpoint:
        """Weighted choice, decided by the request's key so a rerun routes (and caches) the same."""
        rng = random.Random(request.key)
        return rng.choices(self.settings.endpoints, weights=[e.weight for e in self.settings.endpoints])[0]

    def body(self, endpoint: Endpoint, request: ChatRequest) -> dict:
        return {"model": endpoint.model, "messages": list(request.messages), "temperature": self.settings.temperature,
                "max_tokens": self.settings.max_tokens, "seed": api_seed(request.key)}

    def hash_of(self, endpoint: Endpoint, request: ChatRequest) -> str:
        return request_hash(endpoint.model, request.messages, self.settings.temperature, self.settings.max_tokens,
                            request.key)

    # -- the call ------------------------------------------------------------------------------
    def openai_client(self, endpoint: Endpoint) -> openai.OpenAI:
        client = self._clients.get(endpoint.base_url)
        if client is None:
            client = openai.OpenAI(base_url=endpoint.base_url, api_key=endpoint.key(self._env),
                                   timeout=self.settings.timeout, max_retries=self.settings.max_retries)
            self._clients[endpoint.base_url] = client
        return client

    def complete(self, endpoint: Endpoint, body: dict) -> Completion:
        start = time.perf_counter()
        try:
            response = self.raw_completion(endpoint, body)
        except openai.OpenAIError as e:
            status = getattr(e, "status_code", None)
            detail = f" (HTTP {status})" if status else ""
            return Completion(None, error=f"{type(e).__name__}{detail} after {self.settings.max_retries} retries: {e}",
                              latency_s=time.perf_counter() - start)
        return completion_from(response, time.perf_counter() - start)

    def raw_completion(self, endpoint: Endpoint, body: dict) -> dict:
        """The chat.completion body as the endpoint sent it; raises openai errors after the retries."""
        return self.openai_client(endpoint).chat.completions.create(**body).model_dump(exclude_unset=True)

    def generate(self, requests: Sequence[ChatRequest]) -> list[LLMReply]:
        """One reply per request, in order. With the batch backend, raises BatchPending when some
        replies are not in the replies file yet (after storing those that are)."""
        routed = [(r, self.endpoint_for(r)) for r in requests]
        hashes = [self.hash_of(e, r) for r, e in routed]
        cached = self._cached(hashes) if self.settings.cache else {}
        todo = [i for i, h in enumerate(hashes) if h not in cached]
        bodies = {i: self.body(routed[i][1], routed[i][0]) for i in todo}

        fresh: dict[int, Completion] = {}
        pending = None
        if self.batch is not None:
            answered, pending = self.batch.collect({hashes[i]: bodies[i] for i in todo})
            fresh = {i: answered[hashes[i]] for i in todo if hashes[i] in answered}
        elif todo:
            for i in todo:
                self.openai_client(routed[i][1])  # create each endpoint's client here, not racing in the pool
            with ThreadPoolExecutor(max_workers=min(self.settings.concurrency, len(todo))) as pool:
                outcomes = pool.map(lambda i: self.complete(routed[i][1], bodies[i]), todo)
                fresh = dict(zip(todo, outcomes))

        replies = self._store(routed, hashes, cached, fresh)
        if pending is not None:
            raise pending
        return replies

    # -- the DB --------------------------------------------------------------------------------
    def _cached(self, hashes: list[str]) -> dict[str, LLMCall]:
        # Any reply the endpoint gave is reusable, also one the orchestrator found no code in
        # (its LLMCall.error says so): parsing the same text again finds the same.
        with self.session_factory() as session:
            rows = session.scalars(select(LLMCall).where(LLMCall.request_hash.in_(set(hashes)),
                                                         LLMCall.reply.is_not(None), LLMCall.reply != "",
                                                         LLMCall.cached.is_(False))
                                   .order_by(LLMCall.id)).all()
        first: dict[str, LLMCall] = {}
        for row in rows:
            first.setdefault(row.request_hash, row)
        return first

    def _store(self, routed, hashes, cached: dict[str, LLMCall], fresh: dict[int, Completion]) -> list[LLMReply]:
        rows: dict[int, LLMCall] = {}
        for i, ((request, endpoint), h) in enumerate(zip(routed, hashes)):
            if h in cached:
                hit = cached[h]
                rows[i] = LLMCall(job_id=self.job_id, endpoint=hit.endpoint, model=hit.model, request_hash=h,
                                  prompt=list(request.messages), reply=hit.reply, prompt_tokens=hit.prompt_tokens,
                                  completion_tokens=hit.completion_tokens, latency_s=0.0, cost_usd=0.0, cached=True)
            elif i in fresh:  # else: still pending in the batch backend
                done = fresh[i]
                price = price_for(endpoint.model, endpoint.base_url, endpoint.price_per_mtok)
                rows[i] = LLMCall(job_id=self.job_id, endpoint=self.batch.label if self.batch else endpoint.base_url,
                                  model=endpoint.model, request_hash=h, prompt=list(request.messages),
                                  reply=done.text, error=done.error, prompt_tokens=done.prompt_tokens,
                                  completion_tokens=done.completion_tokens, latency_s=done.latency_s,
                                  cost_usd=cost_usd(price, done.prompt_tokens, done.completion_tokens,
                                                    batch=self.batch is not None), cached=False)
        if not rows:
            return []
        with self.session_factory() as session:
            session.add_all(rows.values())
            session.commit()
            return [LLMReply(text=row.reply, call_id=row.id, model=row.model, cached=row.cached, error=row.error)
                    for _, row in sorted(rows.items())]
