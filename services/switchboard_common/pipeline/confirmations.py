"""Confirmations across processes: a sink tells a producer in another process
which event ids it stored, on the confirmations topic (CONFIRMATIONS in
topics.py), so the producer's outbox can let them go.

A message is keyed by the topic the records came from; its value is their event
ids, one a line. Each producer reads every partition from the end (no consumer
group: every instance needs every confirmation). A confirmation lost or missed
(a restart, a broker that lost it) costs a republish after the outbox's
confirm_after_s, which the sink deduplicates and confirms again.

Where the producer and its sink share a process (the usage service and its
sink), the sink confirms in-process instead (Sink.confirmers)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

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
from switchboard_common.pipeline.outbox import Outbox
from switchboard_common.pipeline.topics import CONFIRMATIONS_TOPIC

log = logging.getLogger(__name__)


def encode(event_ids: Sequence[str]) -> bytes:
    return "\n".join(event_ids).encode()


def decode(value: bytes) -> list[str]:
    return [line for line in value.decode().split("\n") if line]


class ConfirmationPublisher:
    """A sink's confirmer for records whose producer runs elsewhere."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer

    async def __call__(self, topic: str, event_ids: Sequence[str]) -> None:
        if not event_ids:
            return
        producer = await self.producer.ready()
        await producer.send_and_wait(CONFIRMATIONS_TOPIC, encode(event_ids), key=topic.encode())


class ConfirmationListener:
    """Confirms, in `outbox`, the event ids stored from its topic."""

    def __init__(self, settings: KafkaSettings, outbox: Outbox) -> None:
        self.settings = settings
        self.outbox = outbox
        self._consumer: AIOKafkaConsumer | None = None

    async def _start(self) -> AIOKafkaConsumer:
        consumer = await start_consumer(
            self.settings, [CONFIRMATIONS_TOPIC], assign_all=True, group_id=None
        )
        await bounded(consumer.seek_to_end(*consumer.assignment()), self.settings.send_timeout_s)
        return consumer

    async def run(self) -> None:
        backoff = Backoff()
        wanted = self.outbox.topic.encode()
        while True:
            try:
                if self._consumer is None:
                    self._consumer = await self._start()
                polled = await self._consumer.getmany(timeout_ms=1000)
                ids = [
                    event_id
                    for messages in polled.values()
                    for m in messages
                    if m.key == wanted
                    for event_id in decode(m.value)
                ]
                await self.outbox.confirm(ids)
                backoff.reset()
            except (KafkaError, OSError, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and not cancelled_from_inside():
                    raise
                log.warning(
                    "reading confirmations failed; will retry",
                    extra=log_fields(error=type(exc).__name__, backoff_s=backoff.next_s),
                )
                await self.close()
                await backoff.sleep()

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        await stop_quietly(consumer)
