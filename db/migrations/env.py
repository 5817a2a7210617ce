"""Alembic environment: the URL comes from db.migrate (config.attributes) or EVO_DATABASE_URL."""
from alembic import context

from db.models import Base
from db.session import database_url, get_engine

config = context.config
url = config.attributes.get("url") or database_url()

with get_engine(url).connect() as connection:
    # Batch mode: SQLite cannot ALTER most things, so Alembic copies the table instead.
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
