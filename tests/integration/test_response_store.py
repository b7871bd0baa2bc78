"""Stored responses, in both stores (SQLite, and the local Redis the limits
tests use): a response is its owner's only."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from switchboard_router.surfaces.response_store import (
    RedisResponseStore,
    ResponseStore,
    SqliteResponseStore,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest_asyncio.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ResponseStore]:
    opened: ResponseStore = (
        SqliteResponseStore(tmp_path / "responses.db")
        if request.param == "sqlite"
        else RedisResponseStore(REDIS_URL)
    )
    try:
        yield opened
    finally:
        await opened.close()


async def test_only_the_owner_reads_or_deletes(store: ResponseStore) -> None:
    # A fresh id per run: Redis outlives the test.
    rid = f"resp_{uuid.uuid4().hex}"
    record = {"response": {"id": rid}, "input_items": [], "conversation": []}
    await store.put("team-a", rid, record)
    assert await store.get("team-a", rid) == record
    assert await store.get("team-b", rid) is None
    assert await store.delete("team-b", rid) is False
    assert await store.get("team-a", rid) == record
    assert await store.delete("team-a", rid) is True
    assert await store.get("team-a", rid) is None
    assert await store.delete("team-a", rid) is False
