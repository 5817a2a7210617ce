"""The Celery app: the one place for broker, queues, routing and reliability settings.

Queues: `control` (orchestration, LLM calls), `cpu` (compiles, static checks), `gpu` (one
worker per GPU, concurrency 1). Results go to the database; the Redis result backend only
keeps chord bookkeeping. Settings come from the environment when the configuration is first
needed (not at import), so the embedded mode can start its Redis and then set EVO_BROKER_URL:

  EVO_BROKER_URL          redis://host:port/db, rediss://..., or redis+socket:///path.sock
  EVO_TASK_TIME_LIMIT     hard limit of one task in seconds (default 1800); the soft limit is 10% (at most 30 s) less
  EVO_VISIBILITY_TIMEOUT  seconds before an unacknowledged task goes to another worker
                          (default 2 x the time limit; must exceed it, or a slow task runs twice)
  EVO_RESTORE_INTERVAL    seconds between sweeps that redeliver tasks of dead workers (default 10)
"""
from __future__ import annotations

import os
from urllib.parse import urlsplit

from celery import Celery
from kombu import Queue

from db.session import ConfigError

QUEUES = ("control", "cpu", "gpu")
BROKER_SCHEMES = ("redis", "rediss", "redis+socket")


def broker_url(url: str | None = None) -> str:
    url = url or os.environ.get("EVO_BROKER_URL")
    if not url:
        raise ConfigError("EVO_BROKER_URL is not set (expected redis://host:port/db)")
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError on a non-numeric port
    except ValueError as e:
        raise ConfigError(f"EVO_BROKER_URL is not a URL: {url!r} ({e})") from None
    if parts.scheme not in BROKER_SCHEMES:
        raise ConfigError(f"EVO_BROKER_URL must be redis://, rediss:// or redis+socket://, got {url!r}")
    if parts.scheme == "redis+socket" and not parts.path:
        raise ConfigError(f"EVO_BROKER_URL has no socket path: {url!r}")
    if parts.scheme != "redis+socket" and not parts.hostname:
        raise ConfigError(f"EVO_BROKER_URL has no host: {url!r}")
    return url


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")
    return value


def task_time_limit() -> int:
    """Hard limit of one task in seconds: also how long a claimed evaluation counts as in flight."""
    return _int_env("EVO_TASK_TIME_LIMIT", 1800)


def settings(url: str | None = None) -> dict:
    url = broker_url(url)
    time_limit = task_time_limit()
    visibility = _int_env("EVO_VISIBILITY_TIMEOUT", 2 * time_limit)
    if visibility <= time_limit:
        raise ConfigError(f"EVO_VISIBILITY_TIMEOUT ({visibility}) must exceed EVO_TASK_TIME_LIMIT ({time_limit})")
    transport = {
        "visibility_timeout": visibility,
        "unacked_restore_interval": _int_env("EVO_RESTORE_INTERVAL", 10),
        "unacked_restore_throttle": 1,  # every sweep scans: recovery time = visibility + interval
    }
    return {
        "broker_url": url,
        "result_backend": url,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": visibility},
        "visibility_timeout": visibility,
        # Survive a Redis restart: reconnect forever, retry result writes (chord counters).
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "result_backend_always_retry": True,
        "result_backend_max_retries": 60,
        "redis_retry_on_timeout": True,
        "redis_backend_health_check_interval": 10,
        "task_queues": [Queue(name) for name in QUEUES],
        "task_default_queue": "control",
        "task_routes": {"workers.tasks.evaluate": {"queue": "gpu"}, "evo.orchestrate.*": {"queue": "control"}},
        # A task is acknowledged only when it finished; a lost worker's task goes to another.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": time_limit,
        "task_soft_time_limit": time_limit - max(1, min(30, time_limit // 10)),  # leaves time to record a timeout
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_expires": 7 * 24 * 3600,
        "worker_hijack_root_logger": False,
        "include": ["workers.tasks", "evo.orchestrate"],
    }


def create_app(url: str | None = None) -> Celery:
    """An app bound to `url` (or EVO_BROKER_URL, read when the configuration is first used)."""
    app = Celery("evo", set_as_current=url is None)
    app.add_defaults(lambda: settings(url))
    return app


app = create_app()
