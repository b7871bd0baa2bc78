"""A durable local outbox: a record is appended (fsynced: SQLite WAL with
synchronous=FULL) before its producer acks anyone, and leaves only once its
sink confirmed it stored.

Only the append must reach the disk before anyone is told: marking records
published and deleting confirmed ones commit without an fsync of their own
(synchronous=NORMAL for that transaction; the next append's fsync carries them,
the WAL being one sequential file). Should the machine lose power first, a lost
mark or delete leaves a record pending or published that was further along, so
it is published again and the sink's event-id check stores it once; a process
crash loses nothing either way (the writes are in the OS already).

A record's life: pending (appended) → published (the broker acked it; kept,
because a broker can still lose it) → deleted (confirmed stored by its event
id). A published record left unconfirmed too long goes back to pending (the
reconciler, relay.py), so the relay publishes it again.

The disk use is bounded: past `max_bytes` append refuses (fail closed) or, for
records a producer may lose rather than stall on, drops the oldest loudly.

One connection on one worker thread; every call is handed to it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge

from switchboard_common import env as values
from switchboard_common.logs import log_fields
from switchboard_common.pipeline.group_commit import GroupCommit, write_alone

log = logging.getLogger(__name__)
T = TypeVar("T")

RECORDS = Gauge(
    "switchboard_outbox_records",
    "Records in an outbox: pending (not yet acked by the broker) or published "
    "(acked, not yet confirmed stored).",
    ["outbox", "state"],
)
BYTES = Gauge("switchboard_outbox_bytes", "Payload bytes held by an outbox.", ["outbox"])
OLDEST = Gauge(
    "switchboard_outbox_oldest_unconfirmed_seconds",
    "Age of the oldest record not yet confirmed stored (0 when empty).",
    ["outbox"],
)
CONFIRMED = Counter(
    "switchboard_outbox_confirmed_total", "Records confirmed stored and deleted.", ["outbox"]
)
REPUBLISHED = Counter(
    "switchboard_outbox_republished_total",
    "Published records found missing downstream and published again.",
    ["outbox"],
)
DROPPED = Counter(
    "switchboard_outbox_dropped_total",
    "Records deleted unconfirmed because a drop-oldest outbox reached its quota.",
    ["outbox"],
)


@dataclass(frozen=True)
class OutboxSettings:
    # The disk quota (payload bytes); keep it below the volume's size.
    max_bytes: int
    # How long a published record may stay unconfirmed before the reconciler
    # looks it up downstream (and republishes it if missing).
    confirm_after_s: float

    @classmethod
    def from_env(
        cls, max_bytes_var: str, default_max_bytes: int, env: Mapping[str, str]
    ) -> OutboxSettings:
        """From a service's settings (read once at its start)."""
        return cls(
            max_bytes=values.integer(env, max_bytes_var, default_max_bytes, minimum=1),
            confirm_after_s=values.number(env, "SWITCHBOARD_OUTBOX_CONFIRM_AFTER_S", 10.0, above=0),
        )


class OutboxFull(Exception):
    """The disk quota is used up: refuse new records rather than lose any."""


class Overflow(enum.Enum):
    REFUSE = "refuse"
    DROP_OLDEST = "drop_oldest"


@dataclass(frozen=True)
class Record:
    seq: int
    event_id: str
    key: bytes
    payload: bytes
    # The W3C traceparent it was appended under ("": not traced); the relay
    # sends it on as a Kafka header.
    trace: str = ""


# The most entries one shared append transaction takes (one caller's may be more).
MAX_GROUP = 2000
# What append takes: (event_id, key, payload).
Entry = tuple[str, bytes, bytes]
# Extra writes that must commit with an append (the gpu service's firing alerts).
Within = Callable[[sqlite3.Connection], None]


def _size(items: Sequence[tuple[Entry, str]]) -> int:
    return sum(len(payload) for (_, _, payload), _ in items)


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
    "event_id TEXT NOT NULL UNIQUE, key BLOB, payload BLOB NOT NULL, "
    "created_at REAL NOT NULL DEFAULT 0, published_at REAL, trace TEXT)"
)


class Outbox:
    def __init__(
        self,
        path: Path,
        name: str,
        topic: str,
        max_bytes: int,
        overflow: Overflow = Overflow.REFUSE,
    ) -> None:
        self.path = path
        self.name = name
        self.topic = topic
        self.max_bytes = max_bytes
        self.overflow = overflow
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"outbox-{name}")
        self._db: sqlite3.Connection | None = None
        self._pending = 0
        self._published = 0
        self._bytes = 0
        self._oldest: float | None = None
        # Payload bytes handed to append and not yet written (the quota counts
        # them). The loop adds, the worker thread takes off as it writes: the
        # lock makes each side's change, and the quota's check, whole.
        self._queued = 0
        self._lock = threading.Lock()
        self._group: GroupCommit[tuple[Entry, str], bool] = GroupCommit(
            self._pool, self._write, MAX_GROUP, self._unqueue
        )
        self.changed = asyncio.Event()
        OLDEST.labels(name).set_function(self.oldest_age)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    @property
    def depth(self) -> int:
        return self._pending + self._published

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def oldest_age(self) -> float:
        return 0.0 if self._oldest is None else max(0.0, time.time() - self._oldest)

    async def open(self, schema: Sequence[str] = (), before: Within | None = None) -> None:
        """Open (creating it, and any tables in `schema` beside it); `before`
        runs first (a producer's own upgrade of an older file)."""

        def connect() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            if before is not None:
                before(db)
            db.execute(_SCHEMA)
            _upgrade(db)
            for statement in schema:
                db.execute(statement)
            self._db = db
            self._count(db)

        await self._run(connect)
        if self._pending:
            self.changed.set()

    def _count(self, db: sqlite3.Connection) -> None:
        """Count from the table: once, at open; every change after adjusts."""
        pending, published, size = db.execute(
            "SELECT count(*) FILTER (WHERE published_at IS NULL), "
            "count(*) FILTER (WHERE published_at IS NOT NULL), "
            "coalesce(sum(length(payload)), 0) FROM outbox"
        ).fetchone()
        self._pending, self._published, self._bytes = int(pending), int(published), int(size)
        self._gauges(db)

    def _gauges(self, db: sqlite3.Connection) -> None:
        """Publish the gauges (on the worker thread, after a change)."""
        oldest = db.execute("SELECT created_at FROM outbox ORDER BY seq LIMIT 1").fetchone()
        self._oldest = float(oldest[0]) if oldest else None
        self._publish()

    def _publish(self) -> None:
        RECORDS.labels(self.name, "pending").set(self._pending)
        RECORDS.labels(self.name, "published").set(self._published)
        BYTES.labels(self.name).set(self._bytes)

    def _removed(self, rows: Sequence[tuple[int, int]]) -> None:
        """Account for deleted rows, each (payload length, was it pending)."""
        for length, was_pending in rows:
            self._bytes -= length
            if was_pending:
                self._pending -= 1
            else:
                self._published -= 1

    def _db_or_fail(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"outbox {self.name} is not open")
        return self._db

    async def append(
        self,
        entries: Sequence[Entry],
        within: Within | None = None,
        traces: Sequence[str] | None = None,
    ) -> list[bool]:
        """Store `entries` durably in one transaction (with `within`'s writes);
        True per entry that was new (an event id seen before is ignored).
        `traces`: each entry's traceparent, when tracing is on. Appends made
        while another is being written share the next transaction (and its
        fsync); one with `within` has a transaction of its own."""
        traced = traces if traces is not None else [""] * len(entries)
        items = list(zip(entries, traced, strict=True))
        size = _size(items)
        with self._lock:
            if self.overflow is Overflow.REFUSE and (
                self._bytes + self._queued + size > self.max_bytes
            ):
                raise OutboxFull(
                    f"{self.name} outbox is full ({self._bytes} of {self.max_bytes} bytes, "
                    f"{self._queued} more being written)"
                )
            # Counted until _write takes them off (written or failed), or they
            # are known never to be written (_unqueue): not until this caller
            # is answered, nor only while it waits.
            self._queued += size
        if within is not None:
            fresh = await write_alone(
                self._pool, functools.partial(self._write, within=within), items, self._unqueue
            )
        else:
            fresh = await self._group.submit(items)
        self.changed.set()
        return fresh

    def _unqueue(self, items: Sequence[tuple[Entry, str]]) -> None:
        """`items` will never be written: stop counting them."""
        with self._lock:
            self._queued -= _size(items)

    def _write(
        self, items: Sequence[tuple[Entry, str]], within: Within | None = None
    ) -> list[bool]:
        """Append in one transaction, synced (on the worker thread)."""
        try:
            db = self._db_or_fail()
            now = time.time()
            fresh = []
            db.execute("BEGIN IMMEDIATE")
            try:
                for (event_id, key, payload), trace in items:
                    cur = db.execute(
                        "INSERT OR IGNORE INTO outbox (event_id, key, payload, created_at, trace) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (event_id, key, payload, now, trace or None),
                    )
                    fresh.append(cur.rowcount == 1)
                if within is not None:
                    within(db)
                added = [len(p) for ((_, _, p), _), new in zip(items, fresh, strict=True) if new]
                removed = []
                if self.overflow is Overflow.DROP_OLDEST:
                    removed = _drop_oldest(db, self._bytes + sum(added) - self.max_bytes)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except BaseException:
            # Nothing written (not opened, not begun, or rolled back).
            self._unqueue(items)
            raise
        with self._lock:
            # In one step, so that the quota never counts these bytes twice.
            self._bytes += sum(added)
            self._queued -= _size(items)
        self._pending += len(added)
        self._removed(removed)
        if removed:
            self._gauges(db)
            DROPPED.labels(self.name).inc(len(removed))
            log.error(
                "outbox full: oldest unconfirmed records deleted",
                extra=log_fields(outbox=self.name, dropped=len(removed), max_bytes=self.max_bytes),
            )
        else:
            # Rows only added: the oldest is the one it was, or these. (A
            # query for it per append cost every record's ack ~60 µs.)
            if self._oldest is None and added:
                self._oldest = now
            self._publish()
        return fresh

    async def unpublished(self, limit: int) -> list[Record]:
        """The oldest records the broker has not acked, in append order."""
        return await self._select("published_at IS NULL", (), limit)

    async def overdue(self, older_than_s: float, limit: int) -> list[Record]:
        """Published records still unconfirmed `older_than_s` after the broker's ack."""
        return await self._select("published_at < ?", (time.time() - older_than_s,), limit)

    async def records(self, limit: int = -1) -> list[Record]:
        return await self._select("1", (), limit)

    async def _select(self, where: str, args: tuple[Any, ...], limit: int) -> list[Record]:
        def read() -> list[Record]:
            rows = self._db_or_fail().execute(
                f"SELECT seq, event_id, key, payload, trace FROM outbox WHERE {where} "  # noqa: S608 - fixed clauses
                "ORDER BY seq LIMIT ?",
                (*args, limit),
            )
            return [
                Record(int(s), str(e), bytes(k or e.encode()), bytes(p), str(t or ""))
                for s, e, k, p, t in rows
            ]

        return await self._run(read)

    async def mark_published(self, records: Sequence[Record]) -> None:
        """The broker acked `records`: keep them until confirmed stored."""
        await self._update(
            "UPDATE outbox SET published_at = ? WHERE seq = ? AND published_at IS NULL",
            [(time.time(), r.seq) for r in records],
            published=1,
        )

    async def republish(self, records: Sequence[Record]) -> None:
        """Published, yet missing downstream: back to pending, for the relay."""
        moved = await self._update(
            "UPDATE outbox SET published_at = NULL WHERE seq = ? AND published_at IS NOT NULL",
            [(r.seq,) for r in records],
            published=-1,
        )
        REPUBLISHED.labels(self.name).inc(moved)
        self.changed.set()

    async def confirm(self, event_ids: Sequence[str]) -> int:
        """`event_ids` are stored downstream: delete them (ids not held here,
        from another producer or confirmed before, are ignored). Returns how
        many left."""
        if not event_ids:
            return 0

        def remove() -> int:
            db = self._db_or_fail()
            removed = []
            with _unsynced(db):
                for event_id in event_ids:
                    row = db.execute(
                        "DELETE FROM outbox WHERE event_id = ? "
                        "RETURNING length(payload), published_at IS NULL",
                        (event_id,),
                    ).fetchone()
                    if row is not None:
                        removed.append((int(row[0]), bool(row[1])))
            self._removed(removed)
            self._gauges(db)
            return len(removed)

        gone = await self._run(remove)
        CONFIRMED.labels(self.name).inc(gone)
        return gone

    async def _update(self, sql: str, rows: Sequence[tuple[Any, ...]], published: int) -> int:
        """Run `sql` per row in one transaction, not synced by itself (a
        record's state, not the record), moving the rows it changed from
        pending to published (`published` 1) or back (-1); returns how many."""
        if not rows:
            return 0

        def write() -> int:
            db = self._db_or_fail()
            with _unsynced(db):
                changed = int(db.executemany(sql, rows).rowcount)
            # Counted here, on the one thread every other count change runs on
            # (_write, _removed): a change made on the loop could be lost.
            self._pending -= published * changed
            self._published += published * changed
            self._publish()
            return changed

        return await self._run(write)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on the outbox's connection (tables opened beside the outbox)."""
        return await self._run(lambda: fn(self._db_or_fail()))

    async def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(shut)
        self._pool.shutdown(wait=True)


@contextlib.contextmanager
def _unsynced(db: sqlite3.Connection) -> Iterator[None]:
    """One transaction whose commit need not reach the disk by itself (see the
    module's docstring): committed, or rolled back on any error; the
    connection is back at synchronous=FULL after it either way."""
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    finally:
        db.execute("PRAGMA synchronous=FULL")


def _drop_oldest(db: sqlite3.Connection, excess: int) -> list[tuple[int, int]]:
    """Delete the oldest records until `excess` bytes are gone."""
    removed: list[tuple[int, int]] = []
    while excess > 0:
        row = db.execute(
            "DELETE FROM outbox WHERE seq = (SELECT min(seq) FROM outbox) "
            "RETURNING length(payload), published_at IS NULL"
        ).fetchone()
        if row is None:
            break
        excess -= int(row[0])
        removed.append((int(row[0]), int(row[1])))
    return removed


def _upgrade(db: sqlite3.Connection) -> None:
    """An outbox written before records were kept until confirmed (event_id and
    payload only): add the columns; its records count as pending, so they are
    published (again, harmlessly) and confirmed like any other."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
    for column, kind in (("key", "BLOB"), ("created_at", "REAL NOT NULL DEFAULT 0"),
                         ("published_at", "REAL"), ("trace", "TEXT")):  # fmt: skip
        if column not in columns:
            db.execute(f"ALTER TABLE outbox ADD COLUMN {column} {kind}")
