"""Numbered SQL migrations with a ledger table, applied in order at start;
applying twice changes nothing, and a migration edited after it was applied
stops start-up instead of drifting.

The SQL ships as package data (switchboard_usage/schema/NNNN_name.sql), read
through importlib.resources, so an installed package finds it wherever it is."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from switchboard_common.logs import log_fields
from switchboard_usage.clickhouse import ClickHouse

log = logging.getLogger(__name__)

MIGRATIONS: Traversable = resources.files("switchboard_usage") / "schema"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        without_comments = "\n".join(
            line for line in self.sql.splitlines() if not line.lstrip().startswith("--")
        )
        return [s.strip() for s in without_comments.split(";") if s.strip()]


def discover(folder: Traversable = MIGRATIONS) -> list[Migration]:
    found = []
    files = [f for f in folder.iterdir() if f.is_file() and f.name.endswith(".sql")]
    for path in sorted(files, key=lambda f: f.name):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migrations are named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {folder}")
    return found


async def apply(clickhouse: ClickHouse, migrations: list[Migration] | None = None) -> list[int]:
    """Apply what the ledger lacks; return the versions applied now."""
    await clickhouse.command(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC')) "
        "ENGINE = MergeTree ORDER BY version"
    )
    ledger = {
        version: checksum
        for version, checksum in await clickhouse.rows(
            "SELECT version, checksum FROM schema_migrations"
        )
    }
    applied = []
    for migration in migrations if migrations is not None else discover():
        if migration.version in ledger:
            if ledger[migration.version] != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} changed after it was "
                    "applied; add a new migration instead"
                )
            continue
        for statement in migration.statements():
            await clickhouse.command(statement)
        await clickhouse.command(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at) "
            "VALUES ({v:UInt32}, {n:String}, {c:String}, now64(3))",
            {"v": migration.version, "n": migration.name, "c": migration.checksum},
        )
        applied.append(migration.version)
        log.info(
            "migration applied", extra=log_fields(version=migration.version, name=migration.name)
        )
    return applied
