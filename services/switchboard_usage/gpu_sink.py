"""GPU samples and alert events: Kafka → ClickHouse (gpu_samples,
gpu_alert_events, and each sample's host readings into host_samples), on the
shared sink loop under its own consumer group, so GPU telemetry never holds
up, or is held up by, usage accounting. It shares the usage process's
ClickHouse client (the embedded engine allows one opener).

Stored alert events are confirmed on the confirmations topic, so the gpu
service's alert outbox (another process) lets them go."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from prometheus_client import Counter

from switchboard.gpu.v1 import events_pb2 as gpu_events_pb2
from switchboard.gpu.v1 import gpu_pb2
from switchboard.registry.v1 import registry_pb2
from switchboard_common.logs import log_fields
from switchboard_common.pipeline import sink as pipeline_sink
from switchboard_common.pipeline.kafka import KafkaSettings
from switchboard_common.pipeline.topics import ALERTS_TOPIC, GPU_TOPICS, SAMPLES_TOPIC
from switchboard_usage.clickhouse import ClickHouse, ts_datetime
from switchboard_usage.host_samples import host_sample_row, store_host_samples

log = logging.getLogger(__name__)

GPU_SINK_GROUP = "switchboard-gpu-sink"
GPU_INSERTED = Counter(
    "switchboard_gpu_sink_inserted_total",
    "GPU sample, host sample and alert rows inserted into ClickHouse.",
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
    "time", "kafka_partition", "kafka_offset", "model",
)  # fmt: skip
_SAMPLE_EVENT_ID = GPU_SAMPLE_COLUMNS.index("event_id")
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
    when = ts_datetime(status.sample_time)
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
        a.hostname, a.gpu_uuid, a.gpu_index, a.value, a.message, ts_datetime(a.start_time),
        ts_datetime(a.time), partition, offset, a.model,
    ]  # fmt: skip


class GpuSink(pipeline_sink.Sink):
    """GPU samples and alert events into ClickHouse (gpu_samples,
    gpu_alert_events; host readings into host_samples, see host_samples.py).

    Duplicates: a retried insert carries the same insert_deduplication_token;
    alert events already stored (by alert_id and state) are skipped before the
    insert; a sample delivered twice lands on the same (hostname, gpu_uuid,
    time) key of a ReplacingMergeTree, and the queries read it with FINAL.
    A message that cannot be decoded is counted, logged and skipped: it stays in
    the topic (for its retention) to be looked at, and never stalls the partition."""

    NAME = "gpu"
    TOPICS = GPU_TOPICS
    GROUP = GPU_SINK_GROUP
    # Samples are history (the live view is the gpu service's), so they wait
    # for company (flush_s, SWITCHBOARD_GPU_SINK_FLUSH_S) and the broker may
    # hold a fetch up to aiokafka's default. Each flush is three ClickHouse
    # queries (two inserts, one lookup), which at one sample a second per node
    # cost an idle usage service ~5 % of a core (bench/README.md). An alert
    # transition flushes at once: its confirmation lets the gpu service's
    # alert outbox go.
    FETCH_WAIT_MS = 500
    URGENT_TOPICS = (ALERTS_TOPIC,)

    def __init__(
        self,
        clickhouse: ClickHouse,
        settings: KafkaSettings,
        assign_all: bool = False,
        confirmers: Sequence[pipeline_sink.Confirmer] = (),
        flush_s: float = pipeline_sink.FLUSH_S,
    ):
        super().__init__(
            settings,
            replay=False,
            assign_all=assign_all,
            confirmers=confirmers,
            flush_s=flush_s,
        )
        self.clickhouse = clickhouse

    async def store(self, batches: pipeline_sink.Batches) -> pipeline_sink.Stored:
        samples: list[list[Any]] = []
        hosts: list[list[Any]] = []
        alerts: dict[tuple[str, str], list[Any]] = {}
        alert_event_ids: list[str] = []
        for tp, messages in batches.items():
            for message in messages:
                try:
                    if tp.topic == SAMPLES_TOPIC:
                        sample = gpu_events_pb2.GpuSampleEvent.FromString(message.value)
                        if not sample.status.hostname:
                            raise ValueError("sample without a hostname")
                        samples.extend(gpu_sample_rows(sample, tp.partition, message.offset))
                        host = host_sample_row(sample, tp.partition, message.offset)
                        if host is not None:
                            hosts.append(host)
                    elif tp.topic == ALERTS_TOPIC:
                        event = gpu_events_pb2.GpuAlertEvent.FromString(message.value)
                        if not event.alert.alert_id:
                            raise ValueError("alert event without an alert_id")
                        key = (event.alert.alert_id, ALERT_STATES.get(event.alert.state, ""))
                        alerts.setdefault(key, gpu_alert_row(event, tp.partition, message.offset))
                        alert_event_ids.append(event.event_id)
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
                settings={
                    "insert_deduplication_token": pipeline_sink.dedup_token(
                        (row[0] for row in alerts.values()), "alerts/"
                    )
                },
            )
        if samples:
            await self.clickhouse.insert(
                "gpu_samples",
                samples,
                GPU_SAMPLE_COLUMNS,
                settings={
                    "insert_deduplication_token": pipeline_sink.dedup_token(
                        (row[_SAMPLE_EVENT_ID] for row in samples), "samples/"
                    )
                },
            )
        stored_hosts = await store_host_samples(self.clickhouse, hosts)
        GPU_INSERTED.inc(len(samples) + len(alerts) + stored_hosts)
        # Every alert transition decoded here is stored now (inserted, or found
        # stored): its event id is confirmed, a republished one included.
        confirmed = {ALERTS_TOPIC: alert_event_ids} if alert_event_ids else {}
        return pipeline_sink.Stored(len(samples) + len(alerts) + stored_hosts, confirmed)
