"""Alembic migrations build exactly the models' schema, and go down and up again, on SQLite
and on PostgreSQL (EVO_TEST_POSTGRES_URL; in a schema of its own so other tests are untouched)."""
import pytest
from sqlalchemy import create_engine, inspect, text

from db.migrate import check, downgrade, upgrade
from db.models import Base

SCHEMA = "evo_service_migrations"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path, postgres_schema):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrate.db'}"
        return
    with postgres_schema(SCHEMA) as pg_url:
        yield pg_url


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_matches_models_and_round_trips(url):
    upgrade(url)
    assert tables(url) == set(Base.metadata.tables) | {"alembic_version"}
    assert check(url) == []  # no difference between the migrated schema and the models

    downgrade(url, "base")
    assert tables(url) == {"alembic_version"}

    upgrade(url)
    assert check(url) == []


def test_check_reports_a_schema_that_drifted(url):
    upgrade(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE stray (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    assert any(diff[0] == "remove_table" and diff[1].name == "stray" for diff in check(url))
