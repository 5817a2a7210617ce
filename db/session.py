"""One engine and session factory, from EVO_DATABASE_URL (default: a SQLite file in EVO_HOME)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker


class ConfigError(ValueError):
    """A malformed setting; the CLI prints it as one line and exits 2."""


def evo_home() -> Path:
    home = Path(os.environ.get("EVO_HOME", Path.home() / ".evo"))
    home.mkdir(parents=True, exist_ok=True)
    return home


def database_url() -> str:
    url = os.environ.get("EVO_DATABASE_URL") or f"sqlite:///{evo_home() / 'evo.db'}"
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise ConfigError(f"EVO_DATABASE_URL is not a database URL: {url!r} ({e})") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(f"EVO_DATABASE_URL must be sqlite:// or postgresql://, got {url!r}")
    return url


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets readers (web, CLI) run beside the one writer; busy_timeout queues writers instead of failing.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def get_engine(url: str | None = None) -> Engine:
    """The engine for `url`, default EVO_DATABASE_URL read now (so a changed setting takes effect)."""
    return _engine(url or database_url())


@lru_cache(maxsize=None)
def _engine(url: str) -> Engine:
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    return engine


def get_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    return _sessionmaker(url or database_url())


@lru_cache(maxsize=None)
def _sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A short transaction: commit on success, roll back on error."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
