"""Apply the registry's Alembic migrations at start, idempotently: Alembic's
`alembic_version` table is the ledger, and on PostgreSQL an advisory lock keeps
two registries starting together from racing."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine

_SCRIPTS = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same for every registry process.
_LOCK_ID = 0x5B_0001


def alembic_config(connection: sa.Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    config.attributes["connection"] = connection
    return config


async def upgrade(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
        await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), "head"))
