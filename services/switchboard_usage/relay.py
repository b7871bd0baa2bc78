"""Outbox → Kafka. An entry leaves the outbox only after the broker acked it
(acks=all); a batch that fails or times out is resent whole, so the broker may
hold duplicates, which the sink drops by event id."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import Counter

from switchboard_common.logs import log_fields
from switchboard_usage.kafka import USAGE_TOPIC, KafkaSettings
from switchboard_usage.outbox import Outbox

log = logging.getLogger(__name__)

PUBLISHED = Counter("switchboard_usage_published_total", "Usage events the broker acked.")
PUBLISH_FAILURES = Counter("switchboard_usage_publish_failures_total", "Failed publish batches.")
BATCH = 500
GATHER_S = 0.05
MAX_BACKOFF_S = 5.0


class Relay:
    def __init__(self, outbox: Outbox, settings: KafkaSettings) -> None:
        self.outbox = outbox
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None

    async def _producer_ready(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = self.settings.producer()
            try:
                await asyncio.wait_for(producer.start(), self.settings.send_timeout_s)
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def publish_once(self) -> int:
        """Publish the oldest batch; returns how many events left the outbox."""
        # Let a few more events arrive: one produce round trip and one outbox
        # delete (an fsync) per batch, not per event.
        await asyncio.sleep(GATHER_S)
        batch = await self.outbox.oldest(BATCH)
        if not batch:
            return 0
        producer = await self._producer_ready()
        futures = [
            await producer.send(USAGE_TOPIC, value=p.payload, key=p.event_id.encode())
            for p in batch
        ]
        await asyncio.wait_for(asyncio.gather(*futures), self.settings.send_timeout_s)
        await self.outbox.delete(batch)
        PUBLISHED.inc(len(batch))
        return len(batch)

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                if await self.publish_once():
                    backoff = 0.1
                    continue
                self.outbox.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.outbox.changed.wait(), 1.0)
            except (KafkaError, TimeoutError, OSError) as exc:
                PUBLISH_FAILURES.inc()
                log.warning(
                    "publishing usage failed; will retry",
                    extra=log_fields(
                        error=type(exc).__name__, backoff_s=backoff, pending=self.outbox.depth
                    ),
                )
                await self._reset_producer()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _reset_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 2.0)

    async def close(self) -> None:
        await self._reset_producer()
