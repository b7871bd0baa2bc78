"""The shared outbox's state machine (pending → published → confirmed and
deleted; published and overdue → looked up → confirmed or republished), its
disk bound, and the relay and reconciler driving it."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio
from aiokafka.errors import KafkaConnectionError
from prometheus_client import REGISTRY

from switchboard_common.pipeline import confirmations
from switchboard_common.pipeline.kafka import (
    KafkaSettings,
    Producer,
    bounded,
    cancelled_from_inside,
)
from switchboard_common.pipeline.outbox import Outbox, OutboxFull, Overflow
from switchboard_common.pipeline.relay import OutboxSource, Reconciler, Relay
from tests.conftest import eventually

pytestmark = pytest.mark.asyncio
TOPIC = "t.v1"


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest_asyncio.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite", "unit", TOPIC, max_bytes=1 << 20)
    await box.open()
    yield box
    await box.close()


def entries(*ids: str) -> list[tuple[str, bytes, bytes]]:
    return [(i, i.encode(), f"payload-{i}".encode()) for i in ids]


class FakeProducer:
    """Records sends; each send's future fails while `broken` is set."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        # Each sent message's Kafka headers (the relay's traceparent, when traced).
        self.headers: list[list[tuple[str, bytes]] | None] = []
        self.broken = False

    async def send(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.broken:
            future.set_exception(KafkaConnectionError("broker away"))
        else:
            self.sent.append((topic, key, value))
            self.headers.append(headers)
            future.set_result(None)
        return future


class FakeProducerHolder(Producer):
    def __init__(self) -> None:
        super().__init__(KafkaSettings("127.0.0.1:1", send_timeout_s=1))
        self.fake = FakeProducer()
        self.resets = 0

    async def ready(self) -> FakeProducer:
        return self.fake

    async def reset(self) -> None:
        self.resets += 1


async def test_a_record_lives_until_confirmed_not_until_acked(outbox: Outbox) -> None:
    assert await outbox.append(entries("a", "b")) == [True, True]
    assert await outbox.append(entries("a")) == [False]
    holder = FakeProducerHolder()
    relay = Relay("unit", [OutboxSource(outbox)], holder)

    assert await relay.publish_once() == 2
    assert [(t, k) for t, k, _ in holder.fake.sent] == [(TOPIC, b"a"), (TOPIC, b"b")]
    # Acked, and still here: published, not gone.
    assert (outbox.depth, outbox.pending) == (2, 0)
    assert _metric("switchboard_outbox_records", outbox="unit", state="published") == 2
    assert await relay.publish_once() == 0, "a published record is not sent again"

    assert await outbox.confirm(["a", "unknown"]) == 1
    assert [r.event_id for r in await outbox.records()] == ["b"]
    assert await outbox.confirm(["a"]) == 0, "confirming twice changes nothing"
    await outbox.confirm(["b"])
    assert outbox.depth == 0
    assert outbox.oldest_age() == 0.0


async def test_the_oldest_age_follows_appends_and_confirms(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gauge of the oldest unconfirmed record, kept without a query per append."""
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    await outbox.append(entries("a"))
    clock[0] = 1010.0
    await outbox.append(entries("b"))
    clock[0] = 1030.0
    assert outbox.oldest_age() == 30.0
    await outbox.confirm(["a"])
    assert outbox.oldest_age() == 20.0
    await outbox.confirm(["b"])
    assert outbox.oldest_age() == 0.0
    await outbox.append(entries("c"))
    clock[0] = 1035.0
    assert outbox.oldest_age() == 5.0


async def test_after_an_idle_spell_the_relay_publishes_at_once(outbox: Outbox) -> None:
    """Gathering is for a busy relay (records that arrive meanwhile share a
    batch); the first record after an idle spell does not wait for it, so the
    usage lag at idle does not include it."""
    holder = FakeProducerHolder()
    relay = Relay("unit", [OutboxSource(outbox)], holder, gather_s=3600.0)
    task = asyncio.create_task(relay.run())
    try:
        await outbox.append(entries("a"))

        async def sent() -> list[bytes]:
            return [k for _, k, _ in holder.fake.sent]

        assert await eventually(sent, timeout=10) == [b"a"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_confirmation_may_come_before_the_ack_is_recorded(outbox: Outbox) -> None:
    """The sink can store a record before the relay marks it published."""
    await outbox.append(entries("a"))
    (record,) = await outbox.unpublished(10)
    await outbox.confirm(["a"])
    await outbox.mark_published([record])
    assert (outbox.depth, outbox.pending) == (0, 0)


async def test_reconcile_confirms_the_stored_and_republishes_the_missing(
    outbox: Outbox,
) -> None:
    await outbox.append(entries("stored", "lost", "fresh"))
    relay = Relay("unit", [OutboxSource(outbox)], FakeProducerHolder())
    await relay.publish_once()
    asked: list[Sequence[str]] = []

    async def lookup(event_ids: Sequence[str]) -> set[str]:
        asked.append(event_ids)
        return {"stored"} & set(event_ids)

    # Nothing is overdue yet: nothing is looked up.
    assert await Reconciler(outbox, 60.0, lookup).reconcile_once() == (0, 0)
    assert asked == []

    republished = _metric("switchboard_outbox_republished_total", outbox="unit")
    assert await Reconciler(outbox, 0.0, lookup).reconcile_once() == (1, 2)
    assert sorted(asked[0]) == ["fresh", "lost", "stored"]
    assert _metric("switchboard_outbox_republished_total", outbox="unit") - republished == 2
    # The missing are pending again, in their original order, and go out again.
    assert [r.event_id for r in await outbox.unpublished(10)] == ["lost", "fresh"]
    holder = FakeProducerHolder()
    assert await Relay("unit", [OutboxSource(outbox)], holder).publish_once() == 2
    assert [k for _, k, _ in holder.fake.sent] == [b"lost", b"fresh"]


async def test_reconcile_without_a_lookup_republishes_every_overdue_record(
    outbox: Outbox,
) -> None:
    await outbox.append(entries("a"))
    await Relay("unit", [OutboxSource(outbox)], FakeProducerHolder()).publish_once()
    assert await Reconciler(outbox, 0.0, lookup=None).reconcile_once() == (0, 1)
    assert outbox.pending == 1


async def test_reconcile_keeps_records_when_the_store_is_away(outbox: Outbox) -> None:
    await outbox.append(entries("a"))
    await Relay("unit", [OutboxSource(outbox)], FakeProducerHolder()).publish_once()

    async def away(event_ids: Sequence[str]) -> set[str]:
        raise ConnectionError("ClickHouse is away")

    with pytest.raises(ConnectionError):
        await Reconciler(outbox, 0.0, away).reconcile_once()
    assert (outbox.depth, outbox.pending) == (1, 0)


async def test_a_failed_send_keeps_the_batch_pending(outbox: Outbox) -> None:
    await outbox.append(entries("a"))
    holder = FakeProducerHolder()
    holder.fake.broken = True
    with pytest.raises(KafkaConnectionError):
        await Relay("unit", [OutboxSource(outbox)], holder).publish_once()
    assert outbox.pending == 1


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path, "unit", TOPIC, max_bytes=1 << 20)
    await box.open()
    await box.append(entries("a", "b"))
    (first, _) = await box.unpublished(10)
    await box.mark_published([first])
    await box.close()

    again = Outbox(path, "unit", TOPIC, max_bytes=1 << 20)
    await again.open()
    try:
        assert (again.depth, again.pending) == (2, 1)
        assert again.size_bytes == len(b"payload-a") + len(b"payload-b")
        assert again.oldest_age() >= 0.0
        assert [r.event_id for r in await again.unpublished(10)] == ["b"]
        assert [r.event_id for r in await again.overdue(0.0, 10)] == ["a"]
    finally:
        await again.close()


async def test_refuses_past_its_quota_counting_unconfirmed_records(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", "unit", TOPIC, max_bytes=20)
    await box.open()
    try:
        await box.append([("a", b"a", b"1234567890")])
        (record,) = await box.unpublished(1)
        await box.mark_published([record])
        # Published but unconfirmed still holds its bytes: fail closed.
        with pytest.raises(OutboxFull):
            await box.append([("b", b"b", b"12345678901")])
        await box.confirm(["a"])
        await box.append([("b", b"b", b"12345678901")])
    finally:
        await box.close()


async def test_drop_oldest_deletes_the_oldest_loudly(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", "dropper", TOPIC, 20, Overflow.DROP_OLDEST)
    await box.open()
    dropped = _metric("switchboard_outbox_dropped_total", outbox="dropper")
    try:
        await box.append([(i, b"k", b"0123456789") for i in ("a", "b", "c")])
        assert [r.event_id for r in await box.records()] == ["b", "c"]
        assert box.size_bytes == 20
    finally:
        await box.close()
    assert _metric("switchboard_outbox_dropped_total", outbox="dropper") - dropped == 1


async def test_an_outbox_from_before_confirmations_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
        "event_id TEXT NOT NULL UNIQUE, payload BLOB NOT NULL)"
    )
    db.execute("INSERT INTO outbox (event_id, payload) VALUES ('old', x'01')")
    db.commit()
    db.close()
    box = Outbox(path, "unit", TOPIC, max_bytes=1 << 20)
    await box.open()
    try:
        (record,) = await box.unpublished(10)
        assert (record.event_id, record.key, record.payload) == ("old", b"old", b"\x01")
    finally:
        await box.close()


async def test_confirmations_round_trip() -> None:
    ids = ["0190a1b2-0000-7000-8000-000000000001", "0190a1b2-0000-7000-8000-000000000002"]
    assert confirmations.decode(confirmations.encode(ids)) == ids
    assert confirmations.decode(b"") == []


async def test_bounded_does_not_wait_for_work_that_ignores_its_cancellation() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        # Like a client's clean-up on a dead connection: it will not stop.
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await bounded(stubborn(), 0.05)
    assert asyncio.get_running_loop().time() - started < 1.0
    release.set()
    assert await bounded(asyncio.sleep(0, "done"), 1.0) == "done"


async def test_a_cancellation_nobody_asked_for_is_told_apart() -> None:
    async def victim() -> bool:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()  # what aiokafka does to a send whose connection it closed
        try:
            await future
        except asyncio.CancelledError:
            return cancelled_from_inside()
        return False

    assert await victim() is True

    async def stopped(ready: asyncio.Event) -> None:
        ready.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            assert not cancelled_from_inside()
            raise

    ready = asyncio.Event()
    task = asyncio.create_task(stopped(ready))
    await ready.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_only_appends_wait_for_the_disk(outbox: Outbox) -> None:
    """An append commits at synchronous=FULL (durable before the producer
    acks); marking published and deleting confirmed records commit at NORMAL
    (a lost mark or delete only republishes, and the sink stores an id once),
    and the connection is back at FULL after each."""
    levels: list[int] = []

    def level(db: sqlite3.Connection) -> int:
        return int(db.execute("PRAGMA synchronous").fetchone()[0])

    statements: list[str] = []
    await outbox.read(lambda db: db.set_trace_callback(statements.append))
    await outbox.append(entries("a"), within=lambda db: levels.append(level(db)))
    records = await outbox.unpublished(10)
    await outbox.mark_published(records)
    await outbox.confirm(["a"])
    assert levels == [2], "FULL inside an append's transaction"
    assert await outbox.read(level) == 2, "and FULL again after the state changes"
    begins = [s for s in statements if s in {"BEGIN IMMEDIATE", "PRAGMA synchronous=NORMAL"}]
    # append, then mark_published and confirm, each begun unsynced.
    assert begins == [
        "BEGIN IMMEDIATE",
        "PRAGMA synchronous=NORMAL",
        "BEGIN IMMEDIATE",
        "PRAGMA synchronous=NORMAL",
        "BEGIN IMMEDIATE",
    ]
    assert outbox.depth == 0


@contextlib.asynccontextmanager
async def _opened(tmp_path: Path, max_bytes: int) -> AsyncIterator[Outbox]:
    box = Outbox(tmp_path / "o.sqlite", "unit", TOPIC, max_bytes=max_bytes)
    await box.open()
    try:
        yield box
    finally:
        await box.close()


Items = list[tuple[tuple[str, bytes, bytes], str]]


async def test_the_quota_counts_written_bytes_once(tmp_path: Path) -> None:
    """Once written, an append's bytes move from "being written" to stored in
    one step: no moment counts them twice, so an append that fits is taken."""
    async with _opened(tmp_path, 20) as box:
        seen: list[int] = []
        write = box._write

        def observed(items: Items) -> list[bool]:
            fresh = write(items)
            # What append's check would add up now: written, its caller not yet answered.
            seen.append(box._bytes + box._queued)
            return fresh

        box._group._commit = observed
        await box.append([("a", b"a", b"1234567890")])
        assert seen == [10]
        await box.append([("b", b"b", b"1234567890")])
        assert box.size_bytes == 20


async def test_a_queued_caller_that_leaves_counts_until_its_records_are_written(
    tmp_path: Path,
) -> None:
    entered, release = threading.Event(), threading.Event()
    async with _opened(tmp_path, 25) as box:
        write = box._write

        def held(items: Items) -> list[bool]:
            entered.set()
            assert release.wait(5)
            return write(items)

        box._group._commit = held
        try:
            first = asyncio.ensure_future(box.append([("a", b"a", b"1234567890")]))
            await asyncio.to_thread(entered.wait, 5)
            leaving = asyncio.ensure_future(box.append([("b", b"b", b"1234567890")]))
            await asyncio.sleep(0)  # queued behind the held commit
            leaving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leaving
            # b's records will still be written: they still count.
            with pytest.raises(OutboxFull):
                await box.append([("c", b"c", b"1234567890")])
            release.set()
            await first

            async def settled() -> bool:
                return box.size_bytes == 20 and box._queued == 0

            await eventually(settled)
            assert [r.event_id for r in await box.records()] == ["a", "b"]
        finally:
            release.set()


async def test_a_lone_caller_cancelled_before_its_write_stops_counting(tmp_path: Path) -> None:
    gate = threading.Event()
    async with _opened(tmp_path, 20) as box:
        busy = box._pool.submit(gate.wait, 5)  # the outbox's thread is busy elsewhere
        try:
            for within in (None, lambda db: None):
                leaving = asyncio.ensure_future(box.append([("a", b"a", b"1234567890")], within))
                await asyncio.sleep(0)
                leaving.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await leaving
                assert box._queued == 0
            gate.set()
            busy.result(5)
            await box.append([("b", b"b", b"12345678901234567890")])
            assert [r.event_id for r in await box.records()] == ["b"]
        finally:
            gate.set()


async def test_a_failed_append_stops_counting(tmp_path: Path) -> None:
    def broken(db: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    async with _opened(tmp_path, 20) as box:
        with pytest.raises(sqlite3.OperationalError):
            await box.append([("a", b"a", b"1234567890")], broken)
        assert box._queued == 0
        await box.append([("b", b"b", b"12345678901234567890")])
