"""Kafka → ClickHouse, exactly once in effect.

Per polled batch and partition: decode, drop event ids ClickHouse already holds
(and repeats inside the batch), insert with a deterministic
insert_deduplication_token, and only then commit the offset. A crash between
insert and commit replays the batch, which then inserts nothing new. A message
that cannot be decoded goes to the dead-letter topic with its error and never
stalls its partition.

GpuSink, the same loop over the gpu topics (GPU samples and alert events) under
its own consumer group, shares the process's ClickHouse client.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError
from google.protobuf import timestamp_pb2
from prometheus_client import Counter

from switchboard.gpu.v1 import events_pb2 as gpu_events_pb2
from switchboard.gpu.v1 import gpu_pb2
from switchboard.registry.v1 import registry_pb2
from switchboard.usage.v1 import events_pb2, usage_pb2
from switchboard_common.gpu_topics import ALERTS_TOPIC, GPU_TOPICS, SAMPLES_TOPIC
from switchboard_common.logs import log_fields
from switchboard_usage.clickhouse import ClickHouse
from switchboard_usage.kafka import (
    DLQ_TOPIC,
    GPU_SINK_GROUP,
    SINK_GROUP,
    USAGE_TOPIC,
    KafkaSettings,
)

log = logging.getLogger(__name__)

INSERTED = Counter("switchboard_usage_sink_inserted_total", "Usage rows inserted into ClickHouse.")
SKIPPED = Counter("switchboard_usage_sink_duplicates_total", "Usage events already stored.")
DEAD = Counter("switchboard_usage_sink_dead_letters_total", "Undecodable usage messages.")
BATCH_RECORDS = 20000
POLL_MS = 500
FLUSH_S = 1.0
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

COLUMNS = (
    "event_id", "request_id", "attempt", "key_name", "requested_model", "model",
    "deployment_id", "provider", "upstream_model", "operation", "stream", "prompt_tokens",
    "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens", "estimated",
    "status", "error_reason", "provider_request_id", "latency_ms", "ttft_ms", "start_time",
    "end_time", "config_version", "router_instance", "sequence", "input_cost_nanos",
    "output_cost_nanos", "total_cost_nanos", "currency", "kafka_partition", "kafka_offset",
    "surface",
)  # fmt: skip


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# Enum names, looked up once: this runs for every event.
_OPERATIONS = {v: k.removeprefix("OPERATION_").lower() for k, v in usage_pb2.Operation.items()}
_STATUSES = {v: k.removeprefix("USAGE_STATUS_").lower() for k, v in usage_pb2.UsageStatus.items()}


def _time(ts: timestamp_pb2.Timestamp) -> dt.datetime:
    # Timestamp.ToDatetime is several times slower than this arithmetic.
    return _EPOCH + dt.timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


def row(event: events_pb2.UsageEvent, partition: int, offset: int) -> list[Any]:
    r = event.record
    return [
        r.event_id, r.request_id, r.attempt, r.key_name, r.requested_model, r.model,
        r.deployment_id, r.provider, r.upstream_model, _OPERATIONS.get(r.operation, ""),
        r.stream, r.prompt_tokens, r.completion_tokens, r.total_tokens, r.cached_tokens,
        r.reasoning_tokens, r.estimated, _STATUSES.get(r.status, ""), r.error_reason,
        r.provider_request_id, r.latency_ms, r.ttft_ms, _time(r.start_time), _time(r.end_time),
        r.config_version, r.router_instance, r.sequence, event.input_cost_nanos,
        event.output_cost_nanos, event.total_cost_nanos, event.currency, partition, offset,
        r.surface,
    ]  # fmt: skip


class _Replay(ConsumerRebalanceListener):  # type: ignore[misc]
    """Re-read assigned partitions from offset 0 once (an operator's re-ingest),
    for a sink that joined the consumer group."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        self.done = False

    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if not self.done and assigned:
            await self.consumer.seek_to_beginning(*assigned)
            self.done = True


class Sink:
    NAME = "usage"
    TOPICS: tuple[str, ...] = (USAGE_TOPIC,)
    GROUP = SINK_GROUP

    def __init__(
        self,
        clickhouse: ClickHouse,
        settings: KafkaSettings,
        replay: bool = False,
        assign_all: bool = False,
    ):
        """assign_all: take every partition directly instead of joining the
        consumer group. Right when exactly one sink exists (the embedded engine
        allows one opener), and it starts at once instead of waiting for group
        rebalances; offsets are still committed under the sink's group."""
        self.clickhouse = clickhouse
        self.settings = settings
        self.replay = replay
        self.assign_all = assign_all
        self._consumer: AIOKafkaConsumer | None = None
        self._dlq: Any = None
        # Test-only fault point: exit hard between an insert and its offset commit.
        self._crash_after_insert = (
            os.environ.get("SWITCHBOARD_FAULT_SINK_CRASH_AFTER_INSERT") == "1"
        )
        # Test-only fault point: ClickHouse refuses inserts for this long after start.
        down_s = float(os.environ.get("SWITCHBOARD_FAULT_CLICKHOUSE_DOWN_S") or 0)
        self._clickhouse_down_until = time.monotonic() + down_s if down_s else 0.0

    async def _start(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap,
            group_id=self.GROUP,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=BATCH_RECORDS,
        )
        await consumer.start()
        if self.assign_all:
            assigned = []
            for topic in self.TOPICS:
                partitions = consumer.partitions_for_topic(topic) or set()
                if not partitions:
                    await consumer.stop()
                    raise KafkaConnectionError(f"no partitions known for {topic} yet")
                assigned += [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            if self.replay:
                await consumer.seek_to_beginning(*assigned)
                self.replay = False
        elif self.replay:
            consumer.subscribe(list(self.TOPICS), listener=_Replay(consumer))
        else:
            consumer.subscribe(list(self.TOPICS))
        return consumer

    async def store(self, batches: Mapping[TopicPartition, Sequence[Any]]) -> int:
        """Insert one poll's messages from every partition as one block; returns
        the rows inserted. The caller commits the offsets only after this."""
        decoded: dict[str, tuple[events_pb2.UsageEvent, int, int]] = {}
        for tp, messages in batches.items():
            for message in messages:
                try:
                    event = events_pb2.UsageEvent.FromString(message.value)
                    if not _UUID.match(event.record.event_id):
                        raise ValueError(f"event_id {event.record.event_id[:64]!r} is not a UUID")
                except Exception as exc:
                    await self._dead_letter(tp, message, exc)
                    continue
                decoded.setdefault(event.record.event_id, (event, tp.partition, message.offset))
        if not decoded:
            return 0
        if time.monotonic() < self._clickhouse_down_until:
            raise ConnectionError("fault injection: ClickHouse is unavailable")
        # Event ids are UUIDv7 (time first) and the table is ordered by them, so
        # one primary-key range covers the batch: ~50x cheaper than an IN list
        # of thousands of literals. It may return neighbours; the set sorts that.
        stored = await self.clickhouse.rows(
            "SELECT event_id FROM usage_events "
            "WHERE event_id BETWEEN {low:String} AND {high:String}",
            {"low": min(decoded), "high": max(decoded)},
        )
        duplicates = 0
        for (event_id,) in stored:
            if decoded.pop(event_id, None) is not None:
                duplicates += 1
        SKIPPED.inc(duplicates)
        if decoded:
            token = ",".join(
                f"{tp.topic}:{tp.partition}:{m[0].offset}-{m[-1].offset}"
                for tp, m in sorted(batches.items())
                if m
            )
            await self.clickhouse.insert(
                "usage_events",
                [row(event, partition, offset) for event, partition, offset in decoded.values()],
                COLUMNS,
                settings={"insert_deduplication_token": token},
            )
            INSERTED.inc(len(decoded))
        if self._crash_after_insert:
            log.error("fault injection: exiting between insert and offset commit")
            os._exit(137)
        return len(decoded)

    async def _collect(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[Any]]:
        """One ClickHouse-sized batch: up to BATCH_RECORDS, or what arrived within
        FLUSH_S of the first message. Small frequent inserts would cost ClickHouse
        a part (and a merge) each, and steal CPU from serving."""
        batches: dict[TopicPartition, list[Any]] = {}
        count = 0
        deadline: float | None = None
        loop = asyncio.get_running_loop()
        while count < BATCH_RECORDS:
            wait_ms = POLL_MS if deadline is None else int((deadline - loop.time()) * 1000)
            if wait_ms <= 0:
                break
            polled = await consumer.getmany(timeout_ms=wait_ms, max_records=BATCH_RECORDS - count)
            for tp, messages in polled.items():
                if messages:
                    batches.setdefault(tp, []).extend(messages)
                    count += len(messages)
            if deadline is None:
                if not count:
                    break
                deadline = loop.time() + FLUSH_S
        return batches

    async def _dead_letter(self, tp: TopicPartition, message: Any, exc: Exception) -> None:
        if self._dlq is None:
            producer = self.settings.producer()
            await producer.start()
            self._dlq = producer
        letter = events_pb2.UsageDeadLetter(
            topic=tp.topic,
            partition=tp.partition,
            offset=message.offset,
            key=message.key or b"",
            value=message.value or b"",
            error=f"{type(exc).__name__}: {exc}",
        )
        letter.time.GetCurrentTime()
        await self._dlq.send_and_wait(DLQ_TOPIC, letter.SerializeToString(), key=message.key)
        DEAD.inc()
        log.warning(
            "usage message sent to the dead-letter topic",
            extra=log_fields(partition=tp.partition, offset=message.offset, error=letter.error),
        )

    async def run(self) -> None:
        backoff = 0.2
        while True:
            try:
                if self._consumer is None:
                    self._consumer = await self._start()
                consumer = self._consumer
                batches = await self._collect(consumer)
                if not batches:
                    continue
                try:
                    await self.store(batches)
                except KafkaError:
                    raise
                except Exception as exc:
                    # Not committed: rewind and retry the same messages later.
                    log.warning(
                        f"{self.NAME} sink: insert failed; will retry",
                        extra=log_fields(error=f"{type(exc).__name__}: {exc}"[:300]),
                    )
                    for tp, messages in batches.items():
                        consumer.seek(tp, messages[0].offset)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                await consumer.commit({tp: m[-1].offset + 1 for tp, m in batches.items()})
                backoff = 0.2
            except (KafkaError, OSError) as exc:
                log.warning(
                    f"{self.NAME} sink: broker error; will retry",
                    extra=log_fields(error=type(exc).__name__, backoff_s=backoff),
                )
                await self._stop_consumer()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _stop_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), 5.0)

    async def close(self) -> None:
        await self._stop_consumer()
        if self._dlq is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._dlq.stop(), 5.0)


GPU_INSERTED = Counter(
    "switchboard_gpu_sink_inserted_total", "GPU sample and alert rows inserted into ClickHouse."
)
GPU_UNDECODABLE = Counter(
    "switchboard_gpu_sink_undecodable_total",
    "GPU messages that could not be decoded and were skipped (they stay in the topic).",
)

# The device readings a sample row carries, in GpuDevice's field names.
GPU_READINGS = (
    "utilization_gpu_percent", "utilization_memory_percent", "memory_used_mib",
    "memory_total_mib", "temperature_c", "power_w", "power_limit_w", "sm_clock_mhz",
    "memory_clock_mhz", "ecc_uncorrected_errors", "last_xid",
)  # fmt: skip
GPU_SAMPLE_COLUMNS = (
    "hostname", "gpu_uuid", "gpu_index", "gpu_name", "time", "nvml_state", "reason",
    "health", "health_reason", *GPU_READINGS, "processes", "labels", "event_id",
    "kafka_partition", "kafka_offset",
)  # fmt: skip
GPU_ALERT_COLUMNS = (
    "event_id", "alert_id", "state", "rule_name", "metric", "comparator", "threshold",
    "severity", "hostname", "gpu_uuid", "gpu_index", "value", "message", "start_time",
    "time", "kafka_partition", "kafka_offset",
)  # fmt: skip
_NVML_STATES = {v: k.removeprefix("NVML_STATE_").lower() for k, v in gpu_pb2.NvmlState.items()}
_HEALTHS = {v: k.removeprefix("GPU_HEALTH_").lower() for k, v in gpu_pb2.GpuHealth.items()}
ALERT_STATES = {v: k.removeprefix("ALERT_STATE_").lower() for k, v in gpu_pb2.AlertState.items()}
SEVERITIES = {v: k.removeprefix("SEVERITY_").lower() for k, v in registry_pb2.Severity.items()}
COMPARATORS = {v: k.removeprefix("COMPARATOR_").lower() for k, v in registry_pb2.Comparator.items()}


def gpu_sample_rows(
    event: gpu_events_pb2.GpuSampleEvent, partition: int, offset: int
) -> list[list[Any]]:
    """One row per device; a sample without devices (NVML unavailable, or no
    GPUs) is one row with an empty gpu_uuid, so history shows the outage."""
    status = event.status
    when = _time(status.sample_time)
    state = _NVML_STATES.get(status.nvml_state, "")
    tail = [dict(status.labels), event.event_id, partition, offset]
    if not status.devices:
        blank = [None] * len(GPU_READINGS)
        return [[status.hostname, "", 0, "", when, state, status.reason, "", "", *blank, 0, *tail]]
    rows = []
    for d in status.devices:
        readings = [
            getattr(d, name) if d.HasField(name) else None  # type: ignore[arg-type]
            for name in GPU_READINGS
        ]
        uuid = d.uuid or f"index:{d.index}"
        head = [status.hostname, uuid, d.index, d.name, when, state, status.reason]
        health = [_HEALTHS.get(d.health, ""), d.health_reason]
        rows.append([*head, *health, *readings, len(d.processes), *tail])
    return rows


def gpu_alert_row(event: gpu_events_pb2.GpuAlertEvent, partition: int, offset: int) -> list[Any]:
    a = event.alert
    return [
        event.event_id, a.alert_id, ALERT_STATES.get(a.state, ""), a.rule_name, a.metric,
        COMPARATORS.get(a.comparator, ""), a.threshold, SEVERITIES.get(a.severity, ""),
        a.hostname, a.gpu_uuid, a.gpu_index, a.value, a.message, _time(a.start_time),
        _time(a.time), partition, offset,
    ]  # fmt: skip


class GpuSink(Sink):
    """GPU samples and alert events into ClickHouse (gpu_samples,
    gpu_alert_events).

    Duplicates: a retried insert carries the same insert_deduplication_token;
    alert events already stored (by alert_id and state) are skipped before the
    insert; a sample delivered twice lands on the same (hostname, gpu_uuid,
    time) key of a ReplacingMergeTree, and the queries read it with FINAL.
    A message that cannot be decoded is counted, logged and skipped: it stays in
    the topic (for its retention) to be looked at, and never stalls the partition."""

    NAME = "gpu"
    TOPICS = GPU_TOPICS
    GROUP = GPU_SINK_GROUP

    def __init__(self, clickhouse: ClickHouse, settings: KafkaSettings, assign_all: bool = False):
        super().__init__(clickhouse, settings, replay=False, assign_all=assign_all)
        self._crash_after_insert = False

    async def store(self, batches: Mapping[TopicPartition, Sequence[Any]]) -> int:
        samples: list[list[Any]] = []
        alerts: dict[tuple[str, str], list[Any]] = {}
        for tp, messages in batches.items():
            for message in messages:
                try:
                    if tp.topic == SAMPLES_TOPIC:
                        sample = gpu_events_pb2.GpuSampleEvent.FromString(message.value)
                        if not sample.status.hostname:
                            raise ValueError("sample without a hostname")
                        samples.extend(gpu_sample_rows(sample, tp.partition, message.offset))
                    elif tp.topic == ALERTS_TOPIC:
                        event = gpu_events_pb2.GpuAlertEvent.FromString(message.value)
                        if not event.alert.alert_id:
                            raise ValueError("alert event without an alert_id")
                        key = (event.alert.alert_id, ALERT_STATES.get(event.alert.state, ""))
                        alerts.setdefault(key, gpu_alert_row(event, tp.partition, message.offset))
                except Exception as exc:
                    GPU_UNDECODABLE.inc()
                    log.error(
                        "gpu message could not be decoded; skipped",
                        extra=log_fields(
                            topic=tp.topic,
                            partition=tp.partition,
                            offset=message.offset,
                            error=f"{type(exc).__name__}: {exc}"[:300],
                        ),
                    )
        token = ",".join(
            f"{tp.topic}:{tp.partition}:{m[0].offset}-{m[-1].offset}"
            for tp, m in sorted(batches.items())
            if m
        )
        if alerts:
            stored = await self.clickhouse.rows(
                "SELECT alert_id, state FROM gpu_alert_events "
                "WHERE alert_id IN {ids:Array(String)}",
                {"ids": sorted({alert_id for alert_id, _ in alerts})},
            )
            for alert_id, state in stored:
                alerts.pop((alert_id, state), None)
        if alerts:
            await self.clickhouse.insert(
                "gpu_alert_events",
                list(alerts.values()),
                GPU_ALERT_COLUMNS,
                settings={"insert_deduplication_token": f"alerts/{token}"},
            )
        if samples:
            await self.clickhouse.insert(
                "gpu_samples",
                samples,
                GPU_SAMPLE_COLUMNS,
                settings={"insert_deduplication_token": f"samples/{token}"},
            )
        GPU_INSERTED.inc(len(samples) + len(alerts))
        return len(samples) + len(alerts)
