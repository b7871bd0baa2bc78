"""An embedded ClickHouse with the usage schema applied, in a test's folder."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from switchboard_usage import migrations
from switchboard_usage.clickhouse import ClickHouse


@contextlib.asynccontextmanager
async def migrated_clickhouse(tmp_path: Path) -> AsyncIterator[ClickHouse]:
    """Opened on `tmp_path/ch`, every migration applied; closed on exit."""
    ch = ClickHouse(f"chdb://{tmp_path}/ch")
    await ch.open()
    try:
        await migrations.apply(ch)
        yield ch
    finally:
        await ch.close()
