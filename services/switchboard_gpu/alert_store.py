"""Alert events on local disk until the broker has them, and the alerts firing
now, so that neither is lost to a broker outage or a restart.

Samples are telemetry and may be dropped when the broker is away; an alert
event is a record someone may be paged on, so it is written here (SQLite WAL,
synchronous=FULL) before it is announced, and deleted only once the broker
acked it. A restarted service takes the firing alerts back, so they resolve
under their own alert_id instead of firing twice.

One connection on one worker thread; every call is handed to it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge

from switchboard.gpu.v1 import events_pb2, gpu_pb2
from switchboard_common.logs import log_fields

log = logging.getLogger(__name__)

PENDING = Gauge("switchboard_gpu_alert_events_pending", "Alert events waiting for the broker.")
DROPPED = Counter(
    "switchboard_gpu_alert_events_dropped_total",
    "Alert events deleted unpublished because the local store reached its cap.",
)
DEFAULT_MAX_EVENTS = 100_000


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    alert_id: str
    payload: bytes


class AlertStore:
    def __init__(self, path: Path, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        self.path = path
        self.max_events = max_events
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gpu-alerts")
        self._db: sqlite3.Connection | None = None
        self._depth = 0
        self.changed = asyncio.Event()

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    @property
    def depth(self) -> int:
        return self._depth

    async def open(self) -> list[gpu_pb2.GpuAlert]:
        """Open (creating it) and return the alerts that were firing."""

        def connect() -> tuple[int, list[bytes]]:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                "alert_id TEXT NOT NULL, payload BLOB NOT NULL)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS firing "
                "(alert_id TEXT PRIMARY KEY, payload BLOB NOT NULL)"
            )
            self._db = db
            (depth,) = db.execute("SELECT count(*) FROM outbox").fetchone()
            firing = [row[0] for row in db.execute("SELECT payload FROM firing ORDER BY alert_id")]
            return int(depth), firing

        depth, firing = await self._run(connect)
        self._set_depth(depth)
        if depth:
            self.changed.set()
        return [gpu_pb2.GpuAlert.FromString(payload) for payload in firing]

    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        PENDING.set(depth)

    async def append(self, events: Sequence[events_pb2.GpuAlertEvent]) -> None:
        """Durably queue `events` for the broker and track which alerts fire."""
        if not events:
            return

        def write() -> tuple[int, int]:
            assert self._db is not None
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for event in events:
                    alert = event.alert
                    db.execute(
                        "INSERT INTO outbox (alert_id, payload) VALUES (?, ?)",
                        (alert.alert_id, event.SerializeToString()),
                    )
                    if alert.state == gpu_pb2.ALERT_STATE_FIRING:
                        db.execute(
                            "INSERT OR REPLACE INTO firing (alert_id, payload) VALUES (?, ?)",
                            (alert.alert_id, alert.SerializeToString()),
                        )
                    else:
                        db.execute("DELETE FROM firing WHERE alert_id = ?", (alert.alert_id,))
                (depth,) = db.execute("SELECT count(*) FROM outbox").fetchone()
                dropped = max(0, int(depth) - self.max_events)
                if dropped:
                    db.execute(
                        "DELETE FROM outbox WHERE seq IN "
                        "(SELECT seq FROM outbox ORDER BY seq LIMIT ?)",
                        (dropped,),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return int(depth) - dropped, dropped

        depth, dropped = await self._run(write)
        self._set_depth(depth)
        if dropped:
            DROPPED.inc(dropped)
            log.error(
                "gpu alert store full: oldest unpublished alert events deleted",
                extra=log_fields(dropped=dropped, cap=self.max_events),
            )
        self.changed.set()

    async def oldest(self, limit: int) -> list[StoredEvent]:
        def read() -> list[StoredEvent]:
            assert self._db is not None
            rows = self._db.execute(
                "SELECT seq, alert_id, payload FROM outbox ORDER BY seq LIMIT ?", (limit,)
            )
            return [StoredEvent(int(seq), str(a), bytes(p)) for seq, a, p in rows]

        events: list[StoredEvent] = await self._run(read)
        return events

    async def delete(self, events: Sequence[StoredEvent]) -> None:
        def remove() -> int:
            assert self._db is not None
            db = self._db
            # One transaction: one fsync for the batch, not one per event.
            db.execute("BEGIN IMMEDIATE")
            db.executemany("DELETE FROM outbox WHERE seq = ?", [(e.seq,) for e in events])
            db.execute("COMMIT")
            (depth,) = db.execute("SELECT count(*) FROM outbox").fetchone()
            return int(depth)

        self._set_depth(await self._run(remove))

    async def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(shut)
        self._pool.shutdown(wait=True)
