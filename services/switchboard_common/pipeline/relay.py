"""Sources → Kafka, and the reconciler that keeps an outbox honest.

The relay publishes each source's oldest batch and waits for the broker's ack
(acks=all); a batch that fails or times out is resent whole, so the broker may
hold duplicates, which the sinks drop by event id. What an ack means is the
source's business: an outbox keeps the record (published) until its sink
confirms it stored; a telemetry buffer forgets it.

The reconciler closes the gap an ack leaves (a broker that loses acknowledged
messages: the local in-memory broker restarted, an unclean leader election, a
topic recreated, retention passing while the sink was down). A record published
but unconfirmed after `confirm_after_s` is looked up where it should be stored;
found, it is confirmed; missing, it goes back to pending and is published again.
Without a lookup (a producer that cannot read the store) every overdue record
is published again: the sink finds it stored and confirms it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from aiokafka.errors import KafkaError
from prometheus_client import Counter

from switchboard_common import tracing
from switchboard_common.logs import log_fields
from switchboard_common.pipeline.kafka import Backoff, Producer, bounded, cancelled_from_inside
from switchboard_common.pipeline.outbox import Outbox, Record

log = logging.getLogger(__name__)

PUBLISHED = Counter(
    "switchboard_pipeline_published_total", "Records the broker acked, by topic.", ["topic"]
)
PUBLISH_FAILURES = Counter(
    "switchboard_pipeline_publish_failures_total", "Failed publish batches, by relay.", ["relay"]
)
BATCH = 500
IDLE_WAIT_S = 1.0


class Sendable(Protocol):
    @property
    def key(self) -> bytes: ...

    @property
    def payload(self) -> bytes: ...


class Source(Protocol):
    """Something the relay drains into one topic."""

    topic: str
    changed: asyncio.Event

    async def take(self, limit: int) -> Sequence[Sendable]:
        """The oldest records not yet acked (without removing them)."""

    async def acked(self, records: Sequence[Sendable]) -> None:
        """The broker acked `records` (as returned by take)."""


class OutboxSource:
    """An outbox as a relay source: acked records stay, marked published."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.topic = outbox.topic
        self.changed = outbox.changed

    async def take(self, limit: int) -> Sequence[Sendable]:
        return await self.outbox.unpublished(limit)

    async def acked(self, records: Sequence[Sendable]) -> None:
        await self.outbox.mark_published([r for r in records if isinstance(r, Record)])


def _publish_span(topic: str, record: Sendable) -> tracing.Span:
    """A traced record's publish span, in the trace it was appended under."""
    remote = tracing.parent(getattr(record, "trace", ""))
    if remote is None:
        return tracing.NOT_TRACED
    return tracing.start(
        f"publish {topic}",
        tracing.SpanKind.PRODUCER,
        remote,
        {
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.destination.name": topic,
            "switchboard.event_id": getattr(record, "event_id", ""),
        },
    )


def _headers(span: tracing.Span) -> list[tuple[str, bytes]] | None:
    """The Kafka headers that carry the trace on to the sink."""
    value = tracing.traceparent(span) if span.is_recording() else ""
    return [(tracing.TRACEPARENT, value.encode())] if value else None


class Relay:
    """Publishes its sources in order (an earlier source's batch goes first)."""

    def __init__(
        self,
        name: str,
        sources: Sequence[Source],
        producer: Producer,
        gather_s: float = 0.0,
    ) -> None:
        self.name = name
        self.sources = sources
        self.producer = producer
        # While busy, let a few more records arrive before each batch: one
        # produce round trip and one outbox write (an fsync) per batch, not per
        # record. The first record after an idle spell goes at once (run()).
        self.gather_s = gather_s

    async def publish_once(self) -> int:
        """Publish one batch of each source; returns how many the broker acked."""
        sent = 0
        for source in self.sources:
            batch = await source.take(BATCH)
            if not batch:
                continue
            producer = await self.producer.ready()
            spans = [_publish_span(source.topic, r) for r in batch]
            failure: BaseException | None = None
            try:
                futures = [
                    await producer.send(
                        source.topic, value=r.payload, key=r.key, headers=_headers(span)
                    )
                    for r, span in zip(batch, spans, strict=True)
                ]
                await bounded(asyncio.gather(*futures), self.producer.settings.send_timeout_s)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                for span in spans:
                    tracing.end(span, failure)
            await source.acked(batch)
            PUBLISHED.labels(source.topic).inc(len(batch))
            sent += len(batch)
        return sent

    async def _idle(self) -> None:
        for source in self.sources:
            source.changed.clear()
        waits = {asyncio.ensure_future(s.changed.wait()) for s in self.sources}
        try:
            await asyncio.wait(waits, timeout=IDLE_WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def run(self) -> None:
        backoff = Backoff(0.1)
        busy = False
        while True:
            try:
                if busy and self.gather_s:
                    await asyncio.sleep(self.gather_s)
                if await self.publish_once():
                    busy = True
                    backoff.reset()
                    continue
                busy = False
                await self._idle()
            except (KafkaError, TimeoutError, OSError, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and not cancelled_from_inside():
                    raise
                PUBLISH_FAILURES.labels(self.name).inc()
                log.warning(
                    f"publishing {self.name} failed; will retry",
                    extra=log_fields(error=type(exc).__name__, backoff_s=backoff.next_s),
                )
                await self.producer.reset()
                await backoff.sleep()

    async def close(self) -> None:
        await self.producer.reset()


# Which of these event ids are stored downstream.
Lookup = Callable[[Sequence[str]], Awaitable[set[str]]]


class Reconciler:
    def __init__(self, outbox: Outbox, confirm_after_s: float, lookup: Lookup | None) -> None:
        self.outbox = outbox
        self.confirm_after_s = confirm_after_s
        self.lookup = lookup
        # Check a few times per confirm_after_s, so nothing waits much past it.
        self.interval_s = min(max(confirm_after_s / 4, 0.2), 5.0)

    async def reconcile_once(self) -> tuple[int, int]:
        """Confirm the overdue records found stored and republish the rest;
        returns (confirmed, republished)."""
        overdue = await self.outbox.overdue(self.confirm_after_s, BATCH * 10)
        if not overdue:
            return 0, 0
        stored = await self.lookup([r.event_id for r in overdue]) if self.lookup else set()
        confirmed = await self.outbox.confirm(sorted(stored)) if stored else 0
        missing = [r for r in overdue if r.event_id not in stored]
        await self.outbox.republish(missing)
        if missing:
            log.warning(
                "published records missing downstream; republishing",
                extra=log_fields(outbox=self.outbox.name, republished=len(missing)),
            )
        return confirmed, len(missing)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.reconcile_once()
            except Exception as exc:
                # The store is away: the records stay published; try again later.
                log.warning(
                    "reconciling the outbox failed; will retry",
                    extra=log_fields(
                        outbox=self.outbox.name, error=f"{type(exc).__name__}: {exc}"[:300]
                    ),
                )
