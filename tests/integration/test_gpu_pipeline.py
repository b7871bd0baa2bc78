"""GPU history in ClickHouse: the gpu sink's rows (the shipped migrations, the
embedded engine) queried by time range and interval with avg/max/min, the
stored alerts listed in their latest state; then the whole path in one
process: scripted NVML → gpu service → a real Kafka-protocol broker (Tansu) →
the usage service's gpu sink → ClickHouse → QueryGpuHistory and ListGpuAlerts
on the gpu service."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from switchboard.gpu.v1 import events_pb2, gpu_pb2, gpu_pb2_grpc
from switchboard.registry.v1 import registry_pb2
from switchboard_common.errors import SwitchboardError
from switchboard_common.pipeline.kafka import KafkaSettings
from switchboard_common.pipeline.topics import ALERTS_TOPIC, SAMPLES_TOPIC
from switchboard_gpu.nvml import DeviceReading, ScriptedNvml
from switchboard_usage import queries
from switchboard_usage.gpu_sink import GpuSink
from tests.conftest import eventually
from tests.integration.test_gpu_service import (
    ADMIN,
    FakeClock,
    Stream,
    Ticker,
    rule,
    rules_applied,
    running_gpu,
    sample_at,
    with_registry,
)
from tests.support.broker import tansu_broker
from tests.support.clickhouse import migrated_clickhouse
from tests.support.inprocess import services

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

README = Path(__file__).resolve().parents[2] / "deploy" / "clickhouse" / "README.md"
WAIT_S = 60.0


@dataclasses.dataclass(frozen=True)
class Message:
    """What the sink reads from aiokafka's ConsumerRecord."""

    value: bytes
    offset: int
    key: bytes | None = None


def base_time() -> dt.datetime:
    """The start of the last whole hour (UTC): a dataset of a few minutes from
    there stays inside one bucket of every interval from 5m up, and well inside
    the tables' TTL."""
    now = dt.datetime.now(dt.UTC)
    return now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)


def sample_event(
    n: int, at: dt.datetime, hostname: str, *devices: gpu_pb2.GpuDevice
) -> events_pb2.GpuSampleEvent:
    status = gpu_pb2.NodeStatus(
        hostname=hostname,
        nvml_state=gpu_pb2.NVML_STATE_AVAILABLE if devices else gpu_pb2.NVML_STATE_UNAVAILABLE,
        reason="" if devices else "Driver Not Loaded",
        devices=devices,
        labels={"zone": "z1"},
    )
    status.sample_time.FromDatetime(at)
    return events_pb2.GpuSampleEvent(event_id=f"sample-{hostname}-{n}", status=status)


def alert_event(
    alert_id: str,
    state: gpu_pb2.AlertState.ValueType,
    fired: dt.datetime,
    at: dt.datetime,
    *,
    hostname: str = "node-1",
    value: float = 85.0,
) -> events_pb2.GpuAlertEvent:
    alert = gpu_pb2.GpuAlert(
        alert_id=alert_id,
        rule_name="hot",
        metric="temperature_c",
        hostname=hostname,
        gpu_uuid="GPU-a",
        state=state,
        severity=registry_pb2.SEVERITY_WARNING,
        comparator=registry_pb2.COMPARATOR_GREATER_THAN,
        value=value,
        threshold=80.0,
        message="temperature_c 85 > 80 for 60s",
    )
    alert.start_time.FromDatetime(fired)
    alert.time.FromDatetime(at)
    return events_pb2.GpuAlertEvent(event_id=f"{alert_id}-{state}", alert=alert)


def batch(
    samples: Sequence[events_pb2.GpuSampleEvent] = (),
    alerts: Sequence[events_pb2.GpuAlertEvent] = (),
    *,
    first_offset: int = 0,
    extra: Sequence[bytes] = (),
) -> dict[TopicPartition, list[Any]]:
    out: dict[TopicPartition, list[Any]] = {}
    values = [e.SerializeToString() for e in samples] + list(extra)
    if values:
        out[TopicPartition(SAMPLES_TOPIC, 0)] = [
            Message(v, first_offset + i) for i, v in enumerate(values)
        ]
    if alerts:
        out[TopicPartition(ALERTS_TOPIC, 0)] = [
            Message(e.SerializeToString(), first_offset + i) for i, e in enumerate(alerts)
        ]
    return out


def dataset(start: dt.datetime) -> list[events_pb2.GpuSampleEvent]:
    """node-1: GPU-a sampled every 20 s for 10 minutes with utilisation 0, 1, 2, …
    (so each minute's readings are known), GPU-b without a utilisation reading
    half the time; node-2: NVML down."""
    events = []
    for n in range(30):
        a = gpu_pb2.GpuDevice(
            index=0,
            uuid="GPU-a",
            name="H100",
            utilization_gpu_percent=float(n),
            memory_used_mib=40_000 + 1000 * n,
            memory_total_mib=80_000,
            temperature_c=50.0 + n,
            health=gpu_pb2.GPU_HEALTH_OK,
        )
        b = gpu_pb2.GpuDevice(index=1, uuid="GPU-b", name="H100", temperature_c=40.0)
        if n % 2 == 0:
            b.utilization_gpu_percent = 100.0
        at = start + dt.timedelta(seconds=20 * n)
        events.append(sample_event(n, at, "node-1", a, b))
        events.append(sample_event(n, at, "node-2"))
    return events


def host_dataset(start: dt.datetime) -> list[events_pb2.GpuSampleEvent]:
    """Host readings of node-1 (a GPU node) and node-2 (NVML down, so host
    readings only) every 20 s for 5 minutes: node-1's CPU is n %, node-2's
    50 %; memory 16 GiB + n GiB of 64 GiB on both."""
    events = []
    for n in range(15):
        at = start + dt.timedelta(seconds=20 * n)
        device = gpu_pb2.GpuDevice(index=0, uuid="GPU-a", utilization_gpu_percent=10.0)
        for hostname, cpu, devices in (("node-1", float(n), (device,)), ("node-2", 50.0, ())):
            event = sample_event(n, at, hostname, *devices)
            event.event_id = f"host-{hostname}-{n}"
            used = 16_384 + 1024 * n
            event.status.host.CopyFrom(
                gpu_pb2.HostMetrics(
                    cpu_percent=cpu,
                    cpu_count=16,
                    memory_percent=100 * used / 65_536,
                    memory_used_mib=used,
                    memory_total_mib=65_536,
                    disk_percent=25.0,
                    disk_used_mib=256_000,
                    disk_total_mib=1_024_000,
                    load_average_1m=1.5,
                )
            )
            events.append(event)
    return events


def history(
    start: dt.datetime, end: dt.datetime, interval: str, **filters: str
) -> gpu_pb2.QueryGpuHistoryRequest:
    return gpu_pb2.QueryGpuHistoryRequest(
        start=start.isoformat(), end=end.isoformat(), interval=interval, **filters
    )


def points(reply: gpu_pb2.QueryGpuHistoryResponse) -> list[tuple[Any, ...]]:
    return [
        (
            p.hostname,
            p.gpu_uuid,
            p.bucket_start.ToDatetime(dt.UTC),
            round(p.avg, 6),
            p.max,
            p.min,
            p.samples,
        )
        for p in reply.points
    ]


async def test_history_at_each_interval(tmp_path: Path) -> None:
    start = base_time()
    minute = dt.timedelta(minutes=1)
    async with migrated_clickhouse(tmp_path) as ch:
        sink = GpuSink(ch, KafkaSettings("127.0.0.1:1"))  # store() only: no broker
        events = dataset(start)
        # 30 samples of 2 GPUs, and 30 of node-2 alone.
        assert (await sink.store(batch(events))).rows == 90
        # The same batch again (a retried insert) and two samples delivered
        # again in a later batch (a crash before the offset commit): no change.
        await sink.store(batch(events))
        await sink.store(batch(events[:4], first_offset=100))

        end = start + 10 * minute
        by_minute = await queries.gpu_history(ch, history(start, end, "1m", gpu_uuid="GPU-a"))
        five = await queries.gpu_history(ch, history(start, end, "5m"))
        hour = await queries.gpu_history(ch, history(start, end, "1h", hostname="node-1"))
        day = await queries.gpu_history(ch, history(start, end, "1d", metric="temperature_c"))
        memory = await queries.gpu_history(
            ch, history(start, start + minute, "1m", metric="memory_used_percent")
        )
        # A range inside one bucket is widened to the whole bucket.
        widened = await queries.gpu_history(
            ch, history(start + dt.timedelta(seconds=90), start + dt.timedelta(seconds=100), "1m")
        )
        empty = await queries.gpu_history(ch, history(start, end, "1m", hostname="node-2"))
        [(raw_rows,)] = await ch.rows("SELECT count() FROM gpu_samples FINAL")
        [(outage,)] = await ch.rows(
            "SELECT reason FROM gpu_samples FINAL WHERE hostname = 'node-2' LIMIT 1"
        )

    # Minute m holds samples 3m, 3m+1, 3m+2: utilisation avg 3m+1, max 3m+2, min 3m.
    assert by_minute.metric == "utilization_gpu_percent"
    assert by_minute.interval == "1m"
    assert points(by_minute) == [
        ("node-1", "GPU-a", start + m * minute, 3.0 * m + 1, 3.0 * m + 2, 3.0 * m, 3)
        for m in range(10)
    ]
    # GPU-b has a reading on every other sample only: averaged over those,
    # never padded with zeros. node-2 had no devices: no points.
    assert points(five) == [
        ("node-1", "GPU-a", start, 7.0, 14.0, 0.0, 15),
        ("node-1", "GPU-a", start + 5 * minute, 22.0, 29.0, 15.0, 15),
        ("node-1", "GPU-b", start, 100.0, 100.0, 100.0, 8),
        ("node-1", "GPU-b", start + 5 * minute, 100.0, 100.0, 100.0, 7),
    ]
    hour_start = start.replace(minute=0)
    assert points(hour) == [
        ("node-1", "GPU-a", hour_start, 14.5, 29.0, 0.0, 30),
        ("node-1", "GPU-b", hour_start, 100.0, 100.0, 100.0, 15),
    ]
    day_start = start.replace(hour=0, minute=0)
    assert points(day) == [
        ("node-1", "GPU-a", day_start, 64.5, 79.0, 50.0, 30),
        ("node-1", "GPU-b", day_start, 40.0, 40.0, 40.0, 30),
    ]
    assert day.start.ToDatetime(dt.UTC) == day_start
    assert day.end.ToDatetime(dt.UTC) == day_start + dt.timedelta(days=1)
    # 40 000 + 1000 n of 80 000 MiB for n = 0, 1, 2.
    assert [(p.gpu_uuid, round(p.avg, 6), p.max) for p in memory.points] == [("GPU-a", 51.25, 52.5)]
    assert widened.start.ToDatetime(dt.UTC) == start + minute
    assert widened.end.ToDatetime(dt.UTC) == start + 2 * minute
    assert [p.samples for p in widened.points] == [3, 1]  # GPU-a; GPU-b's reading at n = 4 only
    assert list(empty.points) == []
    assert raw_rows == 90
    assert outage == "Driver Not Loaded"


async def test_host_samples_are_stored_once_and_charted(tmp_path: Path) -> None:
    start = base_time()
    minute = dt.timedelta(minutes=1)
    async with migrated_clickhouse(tmp_path) as ch:
        sink = GpuSink(ch, KafkaSettings("127.0.0.1:1"))  # store() only: no broker
        events = host_dataset(start)
        # 15 GPU rows (node-1), 15 node-2 outage rows, 30 host rows.
        assert (await sink.store(batch(events))).rows == 60
        # A retried batch, then a redelivery of four samples at new offsets
        # (a sink restart before the offset commit), then one repeat among
        # new samples: the host rows already stored are skipped by event id.
        await sink.store(batch(events))
        await sink.store(batch(events[:4], first_offset=100))
        late = sample_event(99, start + 9 * minute, "node-1")
        late.status.host.CopyFrom(events[0].status.host)
        mixed = await sink.store(batch([events[5], late], first_offset=200))
        # Raw rows, without FINAL: each event id once.
        [(rows, ids)] = await ch.rows("SELECT count(), uniqExact(event_id) FROM host_samples")
        [stored] = await ch.rows(
            "SELECT cpu_count, memory_total_mib, disk_used_mib, disk_total_mib, disk_percent, "
            "load_average_1m, labels FROM host_samples WHERE event_id = 'host-node-1-3'"
        )
        end = start + 5 * minute
        cpu = await queries.gpu_history(ch, history(start, end, "1m", metric="host_cpu_percent"))
        memory = await queries.gpu_history(
            ch, history(start, end, "5m", hostname="node-2", metric="host_memory_used_mib")
        )
        disk = await queries.gpu_history(ch, history(start, end, "1h", metric="host_disk_percent"))
        with pytest.raises(SwitchboardError) as err:
            await queries.gpu_history(
                ch, history(start, end, "1m", metric="host_cpu_percent", gpu_uuid="GPU-a")
            )

    # The two gpu_samples rows (those are merged by key, not skipped) and
    # late's host row only.
    assert mixed.rows == 3
    assert (rows, ids) == (31, 31)
    assert stored == (16, 65_536, 256_000, 1_024_000, 25.0, 1.5, {"zone": "z1"})
    # Minute m holds samples 3m, 3m+1, 3m+2; a host series has no gpu_uuid.
    assert points(cpu) == [
        ("node-1", "", start + m * minute, 3.0 * m + 1, 3.0 * m + 2, 3.0 * m, 3) for m in range(5)
    ] + [("node-2", "", start + m * minute, 50.0, 50.0, 50.0, 3) for m in range(5)]
    assert cpu.metric == "host_cpu_percent"
    # 16 384 + 1024 n MiB for n = 0 … 14.
    assert points(memory) == [("node-2", "", start, 16_384 + 7 * 1024.0, 30_720.0, 16_384.0, 15)]
    hour_start = start.replace(minute=0)
    assert [(p.hostname, p.avg, p.samples) for p in disk.points] == [
        ("node-1", 25.0, 16),  # late's too: the range is widened to the whole hour
        ("node-2", 25.0, 15),
    ]
    assert disk.start.ToDatetime(dt.UTC) == hour_start
    assert err.value.param == "gpu_uuid"


@pytest.mark.parametrize(
    ("request_fields", "param", "fragment"),
    [
        ({"interval": "2m"}, "interval", "1m, 5m, 1h, 1d"),
        ({"metric": "fan_speed"}, "metric", "memory_used_percent"),
        ({"start": "yesterday"}, "start", "RFC 3339"),
        ({"start": "2025-01-02T00:00:00Z", "end": "2025-01-01T00:00:00Z"}, "end", "not after"),
        (
            {"start": "2025-01-01T00:00:00Z", "end": "2025-01-31T00:00:00Z", "interval": "1m"},
            "interval",
            "43200 buckets",
        ),
    ],
)
async def test_history_requests_are_validated(
    request_fields: dict[str, str], param: str, fragment: str
) -> None:
    with pytest.raises(SwitchboardError) as err:
        # Refused before any query: no engine needed.
        await queries.gpu_history(None, gpu_pb2.QueryGpuHistoryRequest(**request_fields))  # type: ignore[arg-type]
    assert err.value.param == param
    assert fragment in err.value.message


async def test_history_defaults_to_the_last_hour_by_minute(tmp_path: Path) -> None:
    now = dt.datetime(2025, 1, 1, 12, 30, 15, tzinfo=dt.UTC)
    async with migrated_clickhouse(tmp_path) as ch:
        reply = await queries.gpu_history(ch, gpu_pb2.QueryGpuHistoryRequest(), now=now)
    assert (reply.metric, reply.interval) == ("utilization_gpu_percent", "1m")
    assert reply.start.ToDatetime(dt.UTC) == dt.datetime(2025, 1, 1, 11, 30, tzinfo=dt.UTC)
    assert reply.end.ToDatetime(dt.UTC) == dt.datetime(2025, 1, 1, 12, 31, tzinfo=dt.UTC)


async def test_alerts_are_listed_in_their_latest_state(tmp_path: Path) -> None:
    start = base_time()
    s = dt.timedelta(seconds=1)
    undecodable = REGISTRY.get_sample_value("switchboard_gpu_sink_undecodable_total") or 0.0
    async with migrated_clickhouse(tmp_path) as ch:
        sink = GpuSink(ch, KafkaSettings("127.0.0.1:1"))
        fired = alert_event("alert-1", gpu_pb2.ALERT_STATE_FIRING, start, start)
        resolved = alert_event(
            "alert-1", gpu_pb2.ALERT_STATE_RESOLVED, start, start + 90 * s, value=40.0
        )
        other = alert_event("alert-2", gpu_pb2.ALERT_STATE_FIRING, start + 60 * s, start + 60 * s)
        elsewhere = alert_event(
            "alert-3",
            gpu_pb2.ALERT_STATE_FIRING,
            start + 30 * s,
            start + 30 * s,
            hostname="node-2",
        )
        initial = await sink.store(batch(alerts=[fired, other], extra=[b"\xff not protobuf"]))
        assert initial.rows == 2
        # The firing event again (redelivered), the resolution, another node's.
        again = await sink.store(batch(alerts=[fired, resolved, elsewhere], first_offset=2))
        assert again.rows == 2
        # Every transition now stored is confirmed to the gpu service's outbox,
        # the redelivered one too (its first confirmation may have been lost).
        assert again.event_ids == {
            ALERTS_TOPIC: [fired.event_id, resolved.event_id, elsewhere.event_id]
        }

        everything = await queries.gpu_alerts(ch, gpu_pb2.ListGpuAlertsRequest())
        active = await queries.gpu_alerts(ch, gpu_pb2.ListGpuAlertsRequest(active_only=True))
        node_1 = await queries.gpu_alerts(
            ch, gpu_pb2.ListGpuAlertsRequest(active_only=True, hostname="node-1")
        )
        newest = await queries.gpu_alerts(ch, gpu_pb2.ListGpuAlertsRequest(limit=1))
        [(stored,)] = await ch.rows("SELECT count() FROM gpu_alert_events")
        view = await ch.rows(
            "SELECT alert_id, state, fired_at, resolved_at, value FROM gpu_alerts ORDER BY alert_id"
        )

    # Newest event first; alert-1 appears once, resolved.
    assert [(a.alert_id, a.state) for a in everything.alerts] == [
        ("alert-1", gpu_pb2.ALERT_STATE_RESOLVED),
        ("alert-2", gpu_pb2.ALERT_STATE_FIRING),
        ("alert-3", gpu_pb2.ALERT_STATE_FIRING),
    ]
    first = everything.alerts[0]
    assert first.start_time.ToDatetime(dt.UTC) == start
    assert first.time.ToDatetime(dt.UTC) == start + 90 * s
    assert first.value == 40.0
    assert (first.rule_name, first.metric, first.threshold) == ("hot", "temperature_c", 80.0)
    assert first.severity == registry_pb2.SEVERITY_WARNING
    assert first.comparator == registry_pb2.COMPARATOR_GREATER_THAN
    assert (first.hostname, first.gpu_uuid) == ("node-1", "GPU-a")
    assert [a.alert_id for a in active.alerts] == ["alert-2", "alert-3"]
    assert [a.alert_id for a in node_1.alerts] == ["alert-2"]
    assert [a.alert_id for a in newest.alerts] == ["alert-1"]
    assert stored == 4
    naive = start.replace(tzinfo=None)
    assert [(r[0], r[1], r[3], r[4]) for r in view] == [
        ("alert-1", "resolved", naive + 90 * s, 40.0),
        ("alert-2", "firing", None, 85.0),
        ("alert-3", "firing", None, 85.0),
    ]
    after = REGISTRY.get_sample_value("switchboard_gpu_sink_undecodable_total") or 0.0
    assert after - undecodable == 1


def readme_gpu_examples() -> dict[str, str]:
    """The SQL of each example under "## GPU history and alerts" in the README."""
    text = README.read_text()
    section = text.split("\n## GPU history and alerts\n", 1)[1].split("\n## ", 1)[0]
    examples = {}
    for chunk in section.split("\n### ")[1:]:
        title, body = chunk.split("\n", 1)
        found = re.findall(r"```SQL\n(.*?)```", body, re.S)
        if found:
            (examples[title],) = found
    return examples


async def test_readme_gpu_examples_run(tmp_path: Path) -> None:
    examples = readme_gpu_examples()
    assert len(examples) >= 4, list(examples)
    start = base_time()
    async with migrated_clickhouse(tmp_path) as ch:
        sink = GpuSink(ch, KafkaSettings("127.0.0.1:1"))
        await sink.store(batch(dataset(start)))
        await sink.store(batch(host_dataset(start), first_offset=100))
        fired = alert_event("alert-1", gpu_pb2.ALERT_STATE_FIRING, start, start)
        await sink.store(batch(alerts=[fired]))
        results = {title: await ch.rows(sql) for title, sql in examples.items()}
    for title, rows in results.items():
        assert rows, f"{title}: no rows"


# The whole path, in one process.


async def until(check: Any, what: str) -> Any:
    """Poll `check()` until it returns something truthy: the pipeline is
    asynchronous by design (the sink batches for up to a second)."""
    return await eventually(check, timeout=WAIT_S, interval=0.2, what=what)


async def test_samples_and_alerts_flow_to_clickhouse_and_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = base_time()
    t0 = start.timestamp()
    reading = DeviceReading(
        index=0, uuid="GPU-a", name="H100", utilization_gpu_percent=10.0, temperature_c=40.0
    )
    backend = ScriptedNvml([reading])
    clock, ticker = FakeClock(t0), Ticker()
    hot = rule("hot", "temperature_c", registry_pb2.COMPARATOR_GREATER_THAN, 80, 20)
    with tansu_broker() as bootstrap:
        monkeypatch.setenv("KAFKA_BOOTSTRAP", bootstrap)
        monkeypatch.setenv("CLICKHOUSE_URL", f"chdb://{tmp_path}/clickhouse")
        monkeypatch.delenv("REGISTRY_DATABASE_URL", raising=False)
        (tmp_path / "stack").mkdir()
        async with services({}, tmp_path / "stack", monkeypatch, ("usage",)) as stack:
            # The gpu service follows a registry of its own (see with_registry),
            # and reaches the broker and the usage service of the stack.
            usage = stack.address("usage")
            async with with_registry(tmp_path / "gpu", monkeypatch) as (alone, registry):
                settings = dataclasses.replace(
                    alone,
                    kafka_bootstrap=bootstrap,
                    address_overrides={**alone.address_overrides, "usage": usage},
                )
                await registry.create(hot)
                async with running_gpu(
                    settings, backend, clock=clock, ticker=ticker, publish=True
                ) as channel:
                    await rules_applied(channel, {"hot"})
                    stream = Stream(channel)
                    await stream.update()  # t0: 10 %, 40 °C
                    for offset, util, temp in ((20, 20, 40), (40, 30, 40), (60, 90, 85)):
                        backend.set_devices(
                            [
                                dataclasses.replace(
                                    reading, utilization_gpu_percent=util, temperature_c=temp
                                )
                            ]
                        )
                        await sample_at(stream, clock, ticker, t0 + offset)
                    backend.set_devices(
                        [
                            dataclasses.replace(
                                reading, utilization_gpu_percent=100, temperature_c=85
                            )
                        ]
                    )
                    await sample_at(stream, clock, ticker, t0 + 80)
                    fired = await stream.alert()
                    backend.set_devices([dataclasses.replace(reading, utilization_gpu_percent=50)])
                    await sample_at(stream, clock, ticker, t0 + 100)
                    resolved = await stream.alert()
                    stream.call.cancel()

                    stub = gpu_pb2_grpc.GpuServiceStub(channel)
                    query = history(start, start + dt.timedelta(minutes=2), "1m")

                    async def all_samples() -> gpu_pb2.QueryGpuHistoryResponse | None:
                        reply = await stub.QueryGpuHistory(query, timeout=WAIT_S, metadata=ADMIN)
                        return reply if sum(p.samples for p in reply.points) == 6 else None

                    async def resolution() -> gpu_pb2.ListGpuAlertsResponse | None:
                        reply = await stub.ListGpuAlerts(
                            gpu_pb2.ListGpuAlertsRequest(), timeout=WAIT_S, metadata=ADMIN
                        )
                        done = [a for a in reply.alerts if a.state == gpu_pb2.ALERT_STATE_RESOLVED]
                        return reply if done else None

                    async def alert_outbox_empty() -> bool:
                        # The gpu sink confirmed both events on the confirmations
                        # topic, so the gpu service's outbox let them go.
                        path = settings.home / "gpu" / "alerts.sqlite"
                        with contextlib.closing(sqlite3.connect(path)) as db:
                            (left,) = db.execute("SELECT count(*) FROM outbox").fetchone()
                        return bool(left == 0)

                    async def host_samples() -> gpu_pb2.QueryGpuHistoryResponse | None:
                        # Each sample's host readings (psutil), from the same
                        # events, in host_samples.
                        reply = await stub.QueryGpuHistory(
                            history(start, start + dt.timedelta(minutes=2), "5m", **memory),
                            timeout=WAIT_S,
                            metadata=ADMIN,
                        )
                        return reply if sum(p.samples for p in reply.points) == 6 else None

                    memory = {"metric": "host_memory_total_mib"}
                    busy = {"metric": "host_cpu_percent"}
                    by_minute = await until(all_samples, "6 samples in ClickHouse")
                    hosts = await until(host_samples, "6 host samples in ClickHouse")
                    alerts = await until(resolution, "the resolution in ClickHouse")
                    await until(alert_outbox_empty, "the alert events confirmed stored")
                    coarse = await stub.QueryGpuHistory(
                        history(start, start + dt.timedelta(minutes=2), "5m"),
                        timeout=WAIT_S,
                        metadata=ADMIN,
                    )
                    cpu = await stub.QueryGpuHistory(
                        history(start, start + dt.timedelta(minutes=2), "1m", **busy),
                        timeout=WAIT_S,
                        metadata=ADMIN,
                    )

    minute = dt.timedelta(minutes=1)
    assert points(by_minute) == [
        ("test-node", "GPU-a", start, 20.0, 30.0, 10.0, 3),
        ("test-node", "GPU-a", start + minute, 80.0, 100.0, 50.0, 3),
    ]
    assert points(coarse) == [("test-node", "GPU-a", start, 50.0, 100.0, 10.0, 6)]
    # Stored once each (samples == 6, read with FINAL) and whole: the node's
    # memory, as psutil reads it, in every one.
    total_mib = psutil.virtual_memory().total // (1024 * 1024)
    assert points(hosts) == [("test-node", "", start, total_mib, total_mib, total_mib, 6)]
    assert [(p.bucket_start.ToDatetime(dt.UTC), p.samples) for p in cpu.points] == [
        (start, 3),
        (start + minute, 3),
    ]
    assert all(0 <= p.min <= p.max <= 100 for p in cpu.points)
    (stored,) = alerts.alerts
    assert stored.alert_id == fired.alert_id == resolved.alert_id
    assert stored.state == gpu_pb2.ALERT_STATE_RESOLVED
    assert stored.start_time.ToDatetime(dt.UTC) == start + dt.timedelta(seconds=80)
    assert stored.time.ToDatetime(dt.UTC) == start + dt.timedelta(seconds=100)
    assert stored.message == "resolved: temperature_c 40 no longer > 80"
