"""Kafka → a store (ClickHouse), exactly once in effect: the loop every sink
shares.

Per polled batch: the subclass's store() drops what the store already holds
(by event id) and inserts the rest with a deterministic
insert_deduplication_token (dedup_token, from the events' ids); then the
confirmers learn which event ids are stored (so their outboxes let them go),
and only then is the offset committed. A crash between insert and commit
replays the batch, which then inserts nothing new. A failed store is not
committed: the consumer rewinds and retries the same messages.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from switchboard_common import tracing
from switchboard_common.logs import log_fields
from switchboard_common.pipeline.kafka import (
    Backoff,
    KafkaSettings,
    Producer,
    bounded,
    cancelled_from_inside,
    start_consumer,
    stop_quietly,
)

log = logging.getLogger(__name__)

BATCH_RECORDS = 20000
POLL_MS = 500
# Flush on size or after this long, whichever comes first.
FLUSH_S = 0.1
FETCH_WAIT_MS = 50
# How often an idle sink checks that its partitions' logs still reach its position.
CHECK_ENDS_S = 2.0

Batches = Mapping[TopicPartition, Sequence[Any]]
# Told, after a store, the event ids of one topic now known stored.
Confirmer = Callable[[str, Sequence[str]], Awaitable[None]]


@dataclass(frozen=True)
class Stored:
    # Rows inserted by this store.
    rows: int
    # By topic: the event ids now known stored (inserted now, or found stored).
    event_ids: Mapping[str, Sequence[str]] = field(default_factory=dict)


def dedup_token(event_ids: Iterable[str], prefix: str = "") -> str:
    """ClickHouse's insert_deduplication_token for an insert of these events:
    the same events give the same token, so a retried insert is dropped. It
    names the content, not the offsets: a broker that lost its log hands out
    the same offsets again for other messages, which must not be dropped."""
    digest = hashlib.sha256("\n".join(sorted(set(event_ids))).encode()).hexdigest()
    return f"{prefix}{digest}"


def _insert_spans(sink: str, batches: Batches) -> list[tracing.Span]:
    """One span per traced message, in the trace its relay header names, for
    the batch insert that stores it (one insert, many traces). Off: none."""
    if not tracing.enabled():
        return []
    spans = []
    for messages in batches.values():
        for message in messages:
            value = next((v for k, v in message.headers or () if k == tracing.TRACEPARENT), None)
            remote = tracing.parent(value)
            if remote is None:
                continue
            spans.append(
                tracing.start(
                    f"{sink} sink insert",
                    tracing.SpanKind.CONSUMER,
                    remote,
                    {
                        "messaging.system": "kafka",
                        "messaging.operation.type": "process",
                        "messaging.destination.name": message.topic,
                        "messaging.kafka.offset": message.offset,
                        "db.system.name": "clickhouse",
                        "switchboard.batch_messages": sum(len(m) for m in batches.values()),
                    },
                )
            )
    return spans


def _end(spans: Sequence[tracing.Span], error: BaseException | None) -> None:
    for span in spans:
        tracing.end(span, error)


class _Rebalanced(ConsumerRebalanceListener):  # type: ignore[misc]
    """For a sink that joined the consumer group: tell it when partitions
    changed hands, and re-read assigned partitions from offset 0 until its
    first commit if asked (an operator's re-ingest)."""

    def __init__(self, sink: Sink, consumer: AIOKafkaConsumer) -> None:
        self.sink = sink
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.sink.partitions_changed()
        if self.sink.replay and assigned:
            await self.consumer.seek_to_beginning(*assigned)


class Sink:
    NAME = "sink"
    TOPICS: tuple[str, ...] = ()
    GROUP = ""
    # A sink whose rows nobody waits for may hold a batch longer than FLUSH_S
    # (its flush_s) and let the broker hold its fetches longer: fewer inserts
    # and fetches. A message on one of its URGENT_TOPICS still flushes its
    # batch FLUSH_S after the batch began.
    FETCH_WAIT_MS = FETCH_WAIT_MS
    URGENT_TOPICS: tuple[str, ...] = ()

    def __init__(
        self,
        settings: KafkaSettings,
        replay: bool = False,
        assign_all: bool = False,
        confirmers: Sequence[Confirmer] = (),
        flush_s: float = FLUSH_S,
    ):
        """assign_all: take every partition directly instead of joining the
        consumer group. Right when exactly one sink exists (the embedded engine
        allows one opener), and it starts at once instead of waiting for group
        rebalances; offsets are still committed under the sink's group.
        flush_s: how long a batch may wait for more after its first message."""
        self.settings = settings
        self.flush_s = flush_s
        self.replay = replay
        self.assign_all = assign_all
        self.confirmers = list(confirmers)
        # For dead letters and confirmations.
        self.producer = Producer(settings)
        self._consumer: AIOKafkaConsumer | None = None
        self._ends_checked = 0.0

    async def store(self, batches: Batches) -> Stored:
        """Insert one poll's messages; the caller commits the offsets only after."""
        raise NotImplementedError

    def partitions_changed(self) -> None:
        """This sink's partitions may have changed hands (a new consumer, a
        rebalance): what it remembers of them may no longer be all there is."""

    async def _start(self) -> AIOKafkaConsumer:
        consumer = await start_consumer(
            self.settings,
            self.TOPICS,
            self.assign_all,
            group_id=self.GROUP,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=BATCH_RECORDS,
            # How long the broker may hold a fetch for data: at aiokafka's 500 ms
            # the usage lag at idle measured p50 0.23 s, at 50 ms 0.16 s (the
            # local broker); an idle sink fetches 20 times a second for it.
            fetch_max_wait_ms=self.FETCH_WAIT_MS,
        )
        self.partitions_changed()
        if self.assign_all:
            if self.replay:
                await consumer.seek_to_beginning(*consumer.assignment())
        else:
            consumer.subscribe(list(self.TOPICS), listener=_Rebalanced(self, consumer))
        return consumer

    async def _collect(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[Any]]:
        """One ClickHouse-sized batch: up to BATCH_RECORDS, or what arrived within
        flush_s of the first message (FLUSH_S once it holds an urgent one),
        whichever comes first. Under load batches fill to size; at idle a lone
        record waits flush_s at most (for usage, part of the usage lag). Each
        insert costs ClickHouse a part (and a merge), so flush_s also bounds
        inserts to 1 / flush_s a second per sink, however many producers."""
        batches: dict[TopicPartition, list[Any]] = {}
        count = 0
        first: float | None = None
        urgent = False
        loop = asyncio.get_running_loop()
        while count < BATCH_RECORDS:
            if first is None:
                wait_ms = POLL_MS
            else:
                deadline = first + (FLUSH_S if urgent else self.flush_s)
                wait_ms = int((deadline - loop.time()) * 1000)
                if wait_ms <= 0:
                    break
            polled = await consumer.getmany(timeout_ms=wait_ms, max_records=BATCH_RECORDS - count)
            for tp, messages in polled.items():
                if messages:
                    batches.setdefault(tp, []).extend(messages)
                    count += len(messages)
                    urgent = urgent or tp.topic in self.URGENT_TOPICS
            if first is None:
                if not count:
                    break
                first = loop.time()
        return batches

    async def _rewind_where_the_log_is_short(self, consumer: AIOKafkaConsumer) -> None:
        """A broker that lost messages (it came back empty, or the topic was
        recreated) holds a log that ends before this consumer's position (or the
        offset it committed there since): nothing would be read until the log grew
        past it. Read such a partition from its start; what it lost comes back
        from the producers' outboxes."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._ends_checked < CHECK_ENDS_S:
            return
        self._ends_checked = loop.time()
        assigned = sorted(consumer.assignment())
        if not assigned:
            return

        # Bounded: a position still to be fetched from a broker that is away
        # would wait for it; the caller rebuilds the consumer on a timeout.
        async def rewind() -> None:
            ends = await consumer.end_offsets(assigned)
            short = [tp for tp in assigned if await consumer.position(tp) > ends[tp]]
            if short:
                log.warning(
                    f"{self.NAME} sink: the broker's log ends before our position; "
                    "reading those partitions from their start",
                    extra=log_fields(partitions=[f"{tp.topic}:{tp.partition}" for tp in short]),
                )
                await consumer.seek_to_beginning(*short)

        await bounded(rewind(), self.settings.send_timeout_s)

    async def _confirm(self, stored: Stored) -> None:
        """Tell the confirmers; a failure costs only a later republish (the
        outbox's reconciler), so it never holds up the commit."""
        for topic, event_ids in stored.event_ids.items():
            for confirm in self.confirmers:
                try:
                    await confirm(topic, event_ids)
                except Exception as exc:
                    log.warning(
                        f"{self.NAME} sink: confirming stored records failed",
                        extra=log_fields(error=f"{type(exc).__name__}: {exc}"[:300]),
                    )

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            try:
                if self._consumer is None:
                    self._consumer = await self._start()
                consumer = self._consumer
                batches = await self._collect(consumer)
                if not batches:
                    await self._rewind_where_the_log_is_short(consumer)
                    continue
                spans = _insert_spans(self.NAME, batches)
                try:
                    stored = await self.store(batches)
                except KafkaError as exc:
                    _end(spans, exc)
                    raise
                except Exception as exc:
                    _end(spans, exc)
                    # Not committed: rewind and retry the same messages later.
                    log.warning(
                        f"{self.NAME} sink: insert failed; will retry",
                        extra=log_fields(error=f"{type(exc).__name__}: {exc}"[:300]),
                    )
                    for tp, messages in batches.items():
                        consumer.seek(tp, messages[0].offset)
                    await backoff.sleep()
                    continue
                _end(spans, None)
                await self._confirm(stored)
                # Bounded: aiokafka retries a commit for as long as the broker
                # answers "unknown topic" (one that came back empty); a fresh
                # consumer on the recreated topics is the way out.
                await bounded(
                    consumer.commit({tp: m[-1].offset + 1 for tp, m in batches.items()}),
                    self.settings.send_timeout_s,
                )
                # A replay is done once something read from the start is
                # committed: a consumer rebuilt before that seeks to it again.
                self.replay = False
                backoff.reset()
            # TimeoutError is an OSError.
            except (KafkaError, OSError, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and not cancelled_from_inside():
                    raise
                log.warning(
                    f"{self.NAME} sink: broker error; will retry",
                    extra=log_fields(error=type(exc).__name__, backoff_s=backoff.next_s),
                )
                await self._stop_consumer()
                await backoff.sleep()

    async def _stop_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        await stop_quietly(consumer)

    async def close(self) -> None:
        await self._stop_consumer()
        await self.producer.reset()
