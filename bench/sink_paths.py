"""The ways to get usage events from Kafka payloads into usage_events, side by
side on one embedded ClickHouse: per path, the Python work per event and the
insert, over the same batches of the sink's size. Prints one JSON object
(microseconds per event, and events/s of the two together).

- protobuf_list: what the sink does (ClickHouse decodes the payloads:
  INSERT … SELECT FROM a ProtobufList envelope, partition and offset appended).
- rows: Python rows from the decoded payloads, clickhouse-connect's insert
  (the sink before, and sink_bench's baseline).
- columns: the same values as columns (clickhouse-connect, column_oriented).
Every path decodes each payload once in Python (the sink checks that each one
decodes, and reads its event id)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from switchboard.usage.v1 import events_pb2
from switchboard_common.pipeline.sink import BATCH_RECORDS
from switchboard_usage import migrations, sink
from switchboard_usage.clickhouse import ClickHouse

sys.path.insert(0, str(Path(__file__).parent))
from sink_bench import BASELINE_COLUMNS, TABLES, _baseline_row, _event

Messages = list[tuple[bytes, int, int]]


def _decode_all(messages: Messages) -> None:
    for payload, _, _ in messages:
        events_pb2.UsageEvent.FromString(payload).record.event_id  # noqa: B018


@dataclasses.dataclass
class Way:
    name: str
    prepare: Callable[[Messages], Any]
    insert: Callable[[Any, str], Awaitable[None]]


def _paths(clickhouse: ClickHouse) -> list[Way]:
    async def insert_decoded(data: bytes, token: str) -> None:
        settings = {"insert_deduplication_token": token}
        await clickhouse.insert_decoded(
            "usage_events", sink.COLUMNS, sink.SELECT, sink.FORMAT, data, settings
        )

    def encoded(messages: Messages) -> bytes:
        _decode_all(messages)
        return sink.encode(messages)

    def rows(messages: Messages) -> list[list[Any]]:
        return [_baseline_row(payload, offset) for payload, _, offset in messages]

    def columns(messages: Messages) -> list[list[Any]]:
        return [list(column) for column in zip(*rows(messages), strict=True)]

    async def insert_rows(data: list[list[Any]], token: str) -> None:
        await clickhouse.insert(
            "usage_events", data, BASELINE_COLUMNS, {"insert_deduplication_token": token}
        )

    async def insert_columns(data: list[list[Any]], token: str) -> None:
        settings = {"insert_deduplication_token": token}
        await clickhouse._run(
            lambda: clickhouse._client.insert(
                "usage_events", data, column_names=list(BASELINE_COLUMNS),
                column_oriented=True, settings=settings,
            )
        )  # fmt: skip

    return [
        Way("protobuf_list", encoded, insert_decoded),
        Way("rows", rows, insert_rows),
        Way("columns", columns, insert_columns),
    ]


async def _run(n: int, rounds: int) -> dict[str, Any]:
    payloads = [_event(i) for i in range(n)]
    messages = [(payload, 0, offset) for offset, payload in enumerate(payloads)]
    batches = [messages[i : i + BATCH_RECORDS] for i in range(0, n, BATCH_RECORDS)]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sink-paths-") as tmp:
        clickhouse = ClickHouse(f"chdb://{Path(tmp) / 'ch'}")
        await clickhouse.open()
        try:
            await migrations.apply(clickhouse)
            # Rounds interleave the paths, so a busy moment hits them alike.
            for round_ in range(rounds):
                for path in _paths(clickhouse):
                    for table in TABLES:
                        await clickhouse.command(f"TRUNCATE TABLE {table}")
                    python = inserting = 0.0
                    for number, batch in enumerate(batches):
                        started = time.perf_counter()
                        prepared = path.prepare(batch)
                        python += time.perf_counter() - started
                        started = time.perf_counter()
                        await path.insert(prepared, f"{path.name}/{round_}/{number}")
                        inserting += time.perf_counter() - started
                    (count,) = (await clickhouse.rows("SELECT count() FROM usage_events"))[0]
                    if count != n:
                        raise RuntimeError(f"{path.name} stored {count} of {n}")
                    best = results.get(path.name)
                    if best is None or python + inserting < best["seconds"]:
                        results[path.name] = {
                            "seconds": python + inserting,
                            "python_us_per_event": python / n * 1e6,
                            "insert_us_per_event": inserting / n * 1e6,
                            "events_per_second": n / (python + inserting),
                        }
        finally:
            await clickhouse.close()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many per path")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_run(args.events, args.rounds))))
