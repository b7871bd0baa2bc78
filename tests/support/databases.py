"""Registry databases for tests: a SQLite file, or a fresh database on the
machine's PostgreSQL (created for the test and dropped after it)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

# The server the machine runs (CONTRACT.md); a database on it is created per test.
POSTGRES_ADMIN_URL = os.environ.get(
    "SWITCHBOARD_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)


@contextlib.asynccontextmanager
async def registry_database(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    """A REGISTRY_DATABASE_URL of `kind` (sqlite or postgresql) for one test."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path}/registry-test.db"
        return
    name = f"switchboard_test_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        base = sa.engine.make_url(POSTGRES_ADMIN_URL)
        yield base.set(drivername="postgresql", database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()
