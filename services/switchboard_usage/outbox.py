"""A durable local outbox: events are appended (and fsynced, SQLite WAL with
synchronous=FULL) before they are acked to the router, and deleted only after
the broker acked them. Serving never waits on Kafka; it waits on this disk.

One connection on one worker thread; every call is handed to it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Gauge

from switchboard.usage.v1 import events_pb2

OUTBOX_DEPTH = Gauge("switchboard_usage_outbox_events", "Usage events waiting for the broker.")
OUTBOX_BYTES = Gauge("switchboard_usage_outbox_bytes", "Payload bytes waiting for the broker.")


class OutboxFull(Exception):
    """The disk quota is used up: refuse new events rather than lose any."""


@dataclass(frozen=True)
class Pending:
    seq: int
    event_id: str
    payload: bytes


class Outbox:
    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="outbox")
        self._db: sqlite3.Connection | None = None
        self._bytes = 0
        self._depth = 0
        self.changed = asyncio.Event()

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    @property
    def depth(self) -> int:
        return self._depth

    async def open(self) -> None:
        def connect() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                "event_id TEXT NOT NULL UNIQUE, payload BLOB NOT NULL)"
            )
            row = db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox")
            self._depth, self._bytes = row.fetchone()
            self._db = db

        await self._run(connect)
        self._gauges()

    def _gauges(self) -> None:
        OUTBOX_DEPTH.set(self._depth)
        OUTBOX_BYTES.set(self._bytes)

    async def append(self, events: Sequence[tuple[str, bytes]]) -> list[bool]:
        """Store events durably in one transaction; True per event that was new."""
        size = sum(len(p) for _, p in events)
        if self._bytes + size > self.max_bytes:
            raise OutboxFull(f"usage outbox is full ({self._bytes} of {self.max_bytes} bytes)")

        def write() -> list[bool]:
            assert self._db is not None
            fresh = []
            with self._db:
                for event_id, payload in events:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO outbox (event_id, payload) VALUES (?, ?)",
                        (event_id, payload),
                    )
                    fresh.append(cur.rowcount == 1)
            return fresh

        fresh: list[bool] = await self._run(write)
        added = [p for (_, p), new in zip(events, fresh, strict=True) if new]
        self._depth += len(added)
        self._bytes += sum(len(p) for p in added)
        self._gauges()
        self.changed.set()
        return fresh

    async def oldest(self, limit: int) -> list[Pending]:
        def read() -> list[Pending]:
            assert self._db is not None
            rows = self._db.execute(
                "SELECT seq, event_id, payload FROM outbox ORDER BY seq LIMIT ?", (limit,)
            )
            return [Pending(*row) for row in rows]

        result: list[Pending] = await self._run(read)
        return result

    async def delete(self, done: Sequence[Pending]) -> None:
        def remove() -> None:
            assert self._db is not None
            with self._db:
                self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(p.seq,) for p in done])

        await self._run(remove)
        self._depth -= len(done)
        self._bytes -= sum(len(p.payload) for p in done)
        self._gauges()

    async def pending_cost(self, key_name: str, model: str) -> float:
        """Cost of events not yet published, so budgets count what is in flight."""

        def read() -> list[bytes]:
            assert self._db is not None
            return [row[0] for row in self._db.execute("SELECT payload FROM outbox")]

        payloads: list[bytes] = await self._run(read)
        return _cost_of(payloads, key_name, model)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
        self._pool.shutdown(wait=True)


def _cost_of(payloads: list[bytes], key_name: str, model: str) -> float:
    nanos = 0
    for payload in payloads:
        event = events_pb2.UsageEvent.FromString(payload)
        if (key_name and event.record.key_name == key_name) or (
            model and event.record.model == model
        ):
            nanos += event.total_cost_nanos
    return nanos / 1_000_000_000
