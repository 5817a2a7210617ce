import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from db.models import Base


@pytest.fixture
def pg_session_factory(postgres_schema):
    """session_factory's tables (tests/evo/conftest.py) in a private PostgreSQL schema (other test files share the
    database)."""
    with postgres_schema("evo_test_llm") as url:
        engine = create_engine(url)
        Base.metadata.create_all(engine)
        yield sessionmaker(engine, expire_on_commit=False)
        engine.dispose()
