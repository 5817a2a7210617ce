import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from db.models import Base


@pytest.fixture
def session_factory(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'llm.db'}")
    Base.metadata.create_all(engine)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


@pytest.fixture
def pg_session_factory():
    """The same tables in a private PostgreSQL schema (other test files share the database)."""
    import os

    from sqlalchemy import text

    url = os.environ.get("EVO_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("EVO_TEST_POSTGRES_URL is not set")
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS evo_test_llm CASCADE"))
        conn.execute(text("CREATE SCHEMA evo_test_llm"))
    engine = create_engine(url, connect_args={"options": "-csearch_path=evo_test_llm"})
    Base.metadata.create_all(engine)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()
    with admin.begin() as conn:
        conn.execute(text("DROP SCHEMA evo_test_llm CASCADE"))
    admin.dispose()
