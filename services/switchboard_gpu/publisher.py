"""GPU history to Kafka, where the usage service's gpu sink picks it up for
ClickHouse.

Sampling never waits for the broker. Samples go into a bounded in-memory
buffer; when the broker is away long enough to fill it, the oldest samples are
dropped and counted (switchboard_gpu_samples_dropped_total): they are
telemetry, and a gap in history is better than a stalled monitor. Alert events
are read from the durable AlertStore and deleted only once the broker acked
them, so they survive outages and restarts.

Broker settings follow the usage relay's environment variables
(SWITCHBOARD_KAFKA_IDEMPOTENCE, SWITCHBOARD_KAFKA_SEND_TIMEOUT_S); as there,
correctness never depends on idempotence: the sink stores each sample and each
alert transition once whatever the broker delivers twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from prometheus_client import Counter, Gauge

from switchboard.gpu.v1 import events_pb2, gpu_pb2
from switchboard_common.gpu_topics import ALERTS_TOPIC, GPU_TOPICS, SAMPLES_TOPIC
from switchboard_common.ids import uuid7
from switchboard_common.logs import log_fields
from switchboard_gpu.alert_store import AlertStore

log = logging.getLogger(__name__)

SAMPLES_PUBLISHED = Counter(
    "switchboard_gpu_samples_published_total", "GPU samples the broker acked."
)
SAMPLES_DROPPED = Counter(
    "switchboard_gpu_samples_dropped_total",
    "GPU samples dropped unpublished because the buffer was full (broker away).",
)
SAMPLE_BUFFER = Gauge("switchboard_gpu_sample_buffer", "GPU samples waiting for the broker.")
ALERTS_PUBLISHED = Counter(
    "switchboard_gpu_alert_events_published_total", "GPU alert events the broker acked."
)
PUBLISH_FAILURES = Counter(
    "switchboard_gpu_publish_failures_total", "Failed attempts to publish GPU history."
)
BATCH = 500
MAX_BACKOFF_S = 5.0
IDLE_WAIT_S = 1.0


@dataclass(frozen=True)
class GpuKafkaSettings:
    bootstrap: str
    idempotence: bool = False
    partitions: int = 3
    send_timeout_s: float = 10.0
    # Samples held while the broker is away (an hour at the default 1 s interval).
    sample_buffer: int = 3600

    @classmethod
    def from_env(cls, bootstrap: str, env: Mapping[str, str] | None = None) -> GpuKafkaSettings:
        env = os.environ if env is None else env
        return cls(
            bootstrap=bootstrap,
            idempotence=env.get("SWITCHBOARD_KAFKA_IDEMPOTENCE", "").lower() == "true",
            partitions=int(env.get("SWITCHBOARD_GPU_PARTITIONS") or 3),
            send_timeout_s=float(env.get("SWITCHBOARD_KAFKA_SEND_TIMEOUT_S") or 10),
            sample_buffer=int(env.get("SWITCHBOARD_GPU_SAMPLE_BUFFER") or 3600),
        )

    def producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=self.idempotence,
            request_timeout_ms=int(self.send_timeout_s * 1000),
            linger_ms=5,
        )


async def ensure_topics(settings: GpuKafkaSettings) -> None:
    """Create the gpu topics if missing; the usage service does the same, so
    whichever starts first does not wait for the other."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        for name in GPU_TOPICS:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(name, num_partitions=settings.partitions, replication_factor=1)]
                )
    finally:
        await admin.close()


@dataclass(frozen=True)
class _Sample:
    seq: int
    key: bytes
    payload: bytes


class HistoryPublisher:
    def __init__(self, settings: GpuKafkaSettings, store: AlertStore) -> None:
        self.settings = settings
        self.store = store
        self._buffer: deque[_Sample] = deque()
        self._seq = itertools.count()
        self._samples_ready = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._topics_ready = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def offer(self, status: gpu_pb2.NodeStatus) -> None:
        """Queue one sample; never blocks. Drops the oldest when full."""
        if len(self._buffer) >= self.settings.sample_buffer:
            self._buffer.popleft()
            SAMPLES_DROPPED.inc()
        event = events_pb2.GpuSampleEvent(event_id=uuid7(), status=status)
        self._buffer.append(
            _Sample(next(self._seq), status.hostname.encode(), event.SerializeToString())
        )
        SAMPLE_BUFFER.set(len(self._buffer))
        self._samples_ready.set()

    async def _producer_ready(self) -> AIOKafkaProducer:
        if not self._topics_ready:
            await asyncio.wait_for(ensure_topics(self.settings), self.settings.send_timeout_s)
            self._topics_ready = True
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
        """Publish pending alert events, then a batch of samples; returns how
        many the broker acked."""
        if not self.store.depth and not self._buffer:
            return 0
        producer = await self._producer_ready()
        timeout = self.settings.send_timeout_s
        sent = 0
        alerts = await self.store.oldest(BATCH)
        if alerts:
            futures = [
                await producer.send(ALERTS_TOPIC, value=e.payload, key=e.alert_id.encode())
                for e in alerts
            ]
            await asyncio.wait_for(asyncio.gather(*futures), timeout)
            await self.store.delete(alerts)
            ALERTS_PUBLISHED.inc(len(alerts))
            sent += len(alerts)
        batch = list(itertools.islice(self._buffer, BATCH))
        if batch:
            futures = [
                await producer.send(SAMPLES_TOPIC, value=s.payload, key=s.key) for s in batch
            ]
            await asyncio.wait_for(asyncio.gather(*futures), timeout)
            # By sequence: while this batch was in flight, a full buffer may
            # have dropped some of it already.
            while self._buffer and self._buffer[0].seq <= batch[-1].seq:
                self._buffer.popleft()
            SAMPLE_BUFFER.set(len(self._buffer))
            SAMPLES_PUBLISHED.inc(len(batch))
            sent += len(batch)
        return sent

    async def _idle(self) -> None:
        self._samples_ready.clear()
        self.store.changed.clear()
        if self._buffer or self.store.depth:
            return
        waits = {
            asyncio.ensure_future(self._samples_ready.wait()),
            asyncio.ensure_future(self.store.changed.wait()),
        }
        try:
            await asyncio.wait(waits, timeout=IDLE_WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                if await self.publish_once():
                    backoff = 0.1
                    continue
                await self._idle()
            except (KafkaError, TimeoutError, OSError) as exc:
                PUBLISH_FAILURES.inc()
                log.warning(
                    "publishing gpu history failed; will retry",
                    extra=log_fields(
                        error=type(exc).__name__,
                        backoff_s=backoff,
                        samples_buffered=len(self._buffer),
                        alert_events_pending=self.store.depth,
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
