import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from db.models import Base


@pytest.fixture
def session_factory(tmp_path):
    """Sessions on an empty SQLite database in tmp_path, its tables made from the models."""
    engine = create_engine(f"sqlite:///{tmp_path / 'evo.db'}")
    Base.metadata.create_all(engine)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()
