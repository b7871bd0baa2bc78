"""GPU history to Kafka, on the shared pipeline (switchboard_common.pipeline),
where the usage service's gpu sink picks it up for ClickHouse.

Sampling never waits for the broker. Samples go into a bounded in-memory
buffer; when the broker is away long enough to fill it, the oldest samples are
dropped and counted (switchboard_gpu_samples_dropped_total): they are
telemetry, and a gap in history is better than a stalled monitor. Alert events
are read from the durable AlertStore (an outbox) and kept after the broker's
ack until the gpu sink confirms them stored (the confirmations topic); one
unconfirmed past SWITCHBOARD_OUTBOX_CONFIRM_AFTER_S is published again, which
the sink deduplicates and confirms. So an alert event survives outages,
restarts and a broker that loses what it acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge

from switchboard.gpu.v1 import events_pb2, gpu_pb2
from switchboard_common import env as values
from switchboard_common.ids import uuid7
from switchboard_common.pipeline.confirmations import ConfirmationListener
from switchboard_common.pipeline.kafka import KafkaSettings, Producer
from switchboard_common.pipeline.outbox import OutboxSettings
from switchboard_common.pipeline.relay import OutboxSource, Reconciler, Relay, Sendable
from switchboard_common.pipeline.topics import SAMPLES_TOPIC
from switchboard_gpu.alert_store import DEFAULT_MAX_BYTES, AlertStore

SAMPLES_DROPPED = Counter(
    "switchboard_gpu_samples_dropped_total",
    "GPU samples dropped unpublished because the buffer was full (broker away).",
)
SAMPLE_BUFFER = Gauge("switchboard_gpu_sample_buffer", "GPU samples waiting for the broker.")


@dataclass(frozen=True)
class PublisherSettings:
    kafka: KafkaSettings
    # Samples held while the broker is away (an hour at the default 1 s interval).
    sample_buffer: int = 3600
    outbox: OutboxSettings = field(
        default_factory=lambda: OutboxSettings(DEFAULT_MAX_BYTES, confirm_after_s=10.0)
    )

    @classmethod
    def from_env(cls, bootstrap: str, env: Mapping[str, str]) -> PublisherSettings:
        return cls(
            kafka=KafkaSettings.from_env(bootstrap, env),
            sample_buffer=values.integer(env, "SWITCHBOARD_GPU_SAMPLE_BUFFER", 3600, minimum=1),
            outbox=OutboxSettings.from_env(
                "SWITCHBOARD_GPU_ALERTS_MAX_BYTES", DEFAULT_MAX_BYTES, env
            ),
        )


@dataclass(frozen=True)
class _Sample:
    seq: int
    key: bytes
    payload: bytes


class SampleBuffer:
    """A relay source that forgets what the broker acked, and drops the oldest
    when full."""

    topic = SAMPLES_TOPIC

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.changed = asyncio.Event()
        self._items: deque[_Sample] = deque()
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, status: gpu_pb2.NodeStatus) -> None:
        if len(self._items) >= self.capacity:
            self._items.popleft()
            SAMPLES_DROPPED.inc()
        event = events_pb2.GpuSampleEvent(event_id=uuid7(), status=status)
        self._items.append(
            _Sample(next(self._seq), status.hostname.encode(), event.SerializeToString())
        )
        SAMPLE_BUFFER.set(len(self._items))
        self.changed.set()

    async def take(self, limit: int) -> Sequence[Sendable]:
        return list(itertools.islice(self._items, limit))

    async def acked(self, records: Sequence[Sendable]) -> None:
        # By sequence: while this batch was in flight, a full buffer may have
        # dropped some of it already.
        last = max(r.seq for r in records if isinstance(r, _Sample))
        while self._items and self._items[0].seq <= last:
            self._items.popleft()
        SAMPLE_BUFFER.set(len(self._items))


class HistoryPublisher:
    """Alert events first, then samples, through one relay and producer; the
    reconciler and the confirmations listener keep the alert outbox."""

    def __init__(self, settings: PublisherSettings, store: AlertStore) -> None:
        self.settings = settings
        self.store = store
        self.samples = SampleBuffer(settings.sample_buffer)
        self.relay = Relay(
            "gpu", [OutboxSource(store.outbox), self.samples], Producer(settings.kafka)
        )
        # The gpu service cannot read ClickHouse: overdue events are published
        # again, and the sink's confirmation of the duplicate lets them go.
        self.reconciler = Reconciler(store.outbox, settings.outbox.confirm_after_s, lookup=None)
        self.confirmations = ConfirmationListener(settings.kafka, store.outbox)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def buffered(self) -> int:
        return len(self.samples)

    def offer(self, status: gpu_pb2.NodeStatus) -> None:
        """Queue one sample; never blocks. Drops the oldest when full."""
        self.samples.offer(status)

    async def publish_once(self) -> int:
        return await self.relay.publish_once()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.relay.run(), name="gpu-relay"),
            asyncio.create_task(self.reconciler.run(), name="gpu-reconciler"),
            asyncio.create_task(self.confirmations.run(), name="gpu-confirmations"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.relay.close()
        await self.confirmations.close()
