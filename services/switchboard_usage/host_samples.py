"""Host samples (the node's CPU, memory and disk: NodeStatus.host) from the
gpu samples topic into ClickHouse's host_samples (schema/0009_host_samples.sql).

They ride in the same GpuSampleEvent as the GPU readings, so the gpu sink
stores them in the same batch, and they are as durable as GPU history: no
second producer, topic or consumer group. Each event id is stored once: ids
already in the table are skipped before the insert (a redelivery after a sink
restart), and a retried insert carries a deduplication token."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from switchboard.gpu.v1 import events_pb2
from switchboard_common.pipeline import sink as pipeline_sink
from switchboard_usage.clickhouse import ClickHouse, ts_datetime

# HostMetrics' readings, in its field names (the columns share them).
HOST_READINGS = (
    "cpu_percent", "cpu_count", "memory_percent", "memory_used_mib", "memory_total_mib",
    "disk_percent", "disk_used_mib", "disk_total_mib", "load_average_1m",
)  # fmt: skip
HOST_SAMPLE_COLUMNS = (
    "hostname", "time", *HOST_READINGS, "labels", "event_id", "kafka_partition", "kafka_offset",
)  # fmt: skip
_EVENT_ID = HOST_SAMPLE_COLUMNS.index("event_id")
_HOSTNAME = HOST_SAMPLE_COLUMNS.index("hostname")
_TIME = HOST_SAMPLE_COLUMNS.index("time")


def host_sample_row(
    event: events_pb2.GpuSampleEvent, partition: int, offset: int
) -> list[Any] | None:
    """The sample's host row, or None for a sample without host readings."""
    status = event.status
    if not status.HasField("host"):
        return None
    readings = [getattr(status.host, name) for name in HOST_READINGS]
    return [
        status.hostname, ts_datetime(status.sample_time), *readings, dict(status.labels),
        event.event_id, partition, offset,
    ]  # fmt: skip


async def store_host_samples(clickhouse: ClickHouse, rows: Sequence[list[Any]]) -> int:
    """Insert the rows whose event ids are not stored yet; return how many."""
    fresh = {row[_EVENT_ID]: row for row in rows}
    if not fresh:
        return 0
    # The key's range first, so the lookup reads only the parts these samples
    # can be in.
    stored = await clickhouse.rows(
        "SELECT event_id FROM host_samples "
        "WHERE hostname IN {hosts:Array(String)} "
        "AND time >= {low:DateTime64(3)} AND time <= {high:DateTime64(3)} "
        "AND event_id IN {ids:Array(String)}",
        {
            "hosts": sorted({row[_HOSTNAME] for row in fresh.values()}),
            "low": min(row[_TIME] for row in fresh.values()),
            "high": max(row[_TIME] for row in fresh.values()),
            "ids": sorted(fresh),
        },
    )
    for (event_id,) in stored:
        fresh.pop(event_id, None)
    if not fresh:
        return 0
    await clickhouse.insert(
        "host_samples",
        list(fresh.values()),
        HOST_SAMPLE_COLUMNS,
        settings={"insert_deduplication_token": pipeline_sink.dedup_token(fresh, "hosts/")},
    )
    return len(fresh)
