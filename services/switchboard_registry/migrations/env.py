"""Alembic environment: run on the connection the registry hands over (see
switchboard_registry.migrate), so the same code serves SQLite and PostgreSQL."""

from alembic import context

from switchboard_registry.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
