"""Stored responses of the Responses API (store: true), readable by their owner only.

Where: Redis when REDIS_URL is set (the store every router replica shares, and
where the router already keeps its other request-path state, the rate limits),
else SQLite under SWITCHBOARD_HOME (one router, as in the local stack). Not the
registry's database: that holds configuration that every router follows as
snapshots, written by admins. Not the usage service's ClickHouse: an append-only
ledger, with no point reads or deletes. Responses expire after 30 days, as
OpenAI keeps them.

A response belongs to the key that made it (its name); any other caller is
told it does not exist.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Protocol

import redis.asyncio as redis

TTL_S = 30 * 24 * 3600


class ResponseStore(Protocol):
    async def put(self, owner: str, response_id: str, record: dict[str, Any]) -> None: ...

    async def get(self, owner: str, response_id: str) -> dict[str, Any] | None: ...

    async def delete(self, owner: str, response_id: str) -> bool: ...

    async def close(self) -> None: ...


class SqliteResponseStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection, used from worker threads one call at a time.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, owner TEXT NOT NULL,"
            " expires REAL NOT NULL, record TEXT NOT NULL)"
        )
        self._lock = asyncio.Lock()

    async def _run(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Cursor:
        async with self._lock:
            return await asyncio.to_thread(self._db.execute, sql, args)

    async def put(self, owner: str, response_id: str, record: dict[str, Any]) -> None:
        await self._run(
            "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
            (response_id, owner, time.time() + TTL_S, json.dumps(record)),
        )

    async def get(self, owner: str, response_id: str) -> dict[str, Any] | None:
        cursor = await self._run(
            "SELECT record FROM responses WHERE id = ? AND owner = ? AND expires > ?",
            (response_id, owner, time.time()),
        )
        row = cursor.fetchone()
        return json.loads(row[0]) if row else None

    async def delete(self, owner: str, response_id: str) -> bool:
        cursor = await self._run(
            "DELETE FROM responses WHERE id = ? AND owner = ?", (response_id, owner)
        )
        return cursor.rowcount > 0

    async def close(self) -> None:
        async with self._lock:
            self._db.close()


class RedisResponseStore:
    def __init__(self, url: str) -> None:
        self._redis: redis.Redis = redis.Redis.from_url(url)

    @staticmethod
    def _key(response_id: str) -> str:
        return f"switchboard:responses:{response_id}"

    async def put(self, owner: str, response_id: str, record: dict[str, Any]) -> None:
        value = json.dumps({"owner": owner, "record": record})
        await self._redis.set(self._key(response_id), value, ex=TTL_S)

    async def get(self, owner: str, response_id: str) -> dict[str, Any] | None:
        raw = await self._redis.get(self._key(response_id))
        if raw is None:
            return None
        stored: dict[str, Any] = json.loads(raw)
        record: dict[str, Any] | None = stored["record"] if stored["owner"] == owner else None
        return record

    async def delete(self, owner: str, response_id: str) -> bool:
        if await self.get(owner, response_id) is None:
            return False
        return bool(await self._redis.delete(self._key(response_id)))

    async def close(self) -> None:
        await self._redis.aclose()


def open_store(redis_url: str | None, home: Path) -> ResponseStore:
    if redis_url:
        return RedisResponseStore(redis_url)
    return SqliteResponseStore(home / "router" / "responses.db")
