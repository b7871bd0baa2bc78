"""A registry query cancelled twice, as a stopping server's in-flight RPCs are,
leaves nothing running: before switchboard_registry/sqlite_driver.py, the
aiosqlite hard close it triggers could wait forever and hang the event loop's
shutdown (the CI flake of issue 22)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from switchboard_registry.store import Store
from tests.conftest import eventually

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

ROUNDS = 40
QUERIES = 8


async def test_cancelled_queries_leave_no_task_behind(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite:///{tmp_path}/registry.db")
    rng = random.Random(22)
    try:
        for _ in range(ROUNDS):
            queries = [asyncio.create_task(store.snapshot()) for _ in range(QUERIES)]
            # Let the queries reach the worker threads at different points.
            await asyncio.sleep(rng.random() * 0.004)
            for query in queries:
                query.cancel()
            for _ in range(rng.randint(0, 3)):
                await asyncio.sleep(0)
            for query in queries:
                query.cancel()  # the second cancellation: the server's stop, then the loop's
            await asyncio.gather(*queries, return_exceptions=True)
    finally:
        await store.close()
    this = asyncio.current_task()

    async def nothing_left() -> bool:
        left = [t for t in asyncio.all_tasks() if t is not this and not t.done()]
        assert not left, f"still running: {left}"
        return True

    await eventually(nothing_left, timeout=10)
    # The store still answers after all that.
    reopened = await Store.open(f"sqlite:///{tmp_path}/registry.db")
    try:
        assert (await reopened.snapshot()).version >= 0
    finally:
        await reopened.close()
