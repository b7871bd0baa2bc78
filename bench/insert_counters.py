"""What inside the embedded ClickHouse one usage-sink insert costs, from its
own counters: the embedded engine keeps no system.query_log, but it keeps
system.events (its ProfileEvents, summed since it started), so each kind of
insert runs --inserts times on a fresh engine with merges stopped (only the
insert counts) and the counters' growth is divided by the inserts. Kinds: the
sink's INSERT … SELECT from a ProtobufList file into usage_events as shipped,
the same without usage_hourly's materialized view, the same rows into a Null
table (decoding and planning, no part written), and one row into a
one-column MergeTree (a part's fixed cost). Prints one JSON line per kind:
CPU (user, system) and the query's phases, in ms per insert.

    PYTHONPATH=services:gen python bench/insert_counters.py --inserts 40 --events 15
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

from switchboard_usage import migrations, sink
from switchboard_usage.clickhouse import ClickHouse

sys.path.insert(0, str(Path(__file__).parent))
from sink_bench import _event

# ProfileEvents counters, in µs, reported in ms per insert.
COUNTERS = {
    "UserTimeMicroseconds": "user_ms",
    "SystemTimeMicroseconds": "system_ms",
    "QueryAnalysisMicroseconds": "analysis_ms",
    "QueryPlanBuildMicroseconds": "plan_ms",
    "QueryPipelineBuildMicroseconds": "pipeline_ms",
    "CompileExpressionsMicroseconds": "compile_expressions_ms",
}
KINDS = ("usage_events", "usage_events without the view", "Null table", "one-row MergeTree")


async def _kind(kind: str, inserts: int, events: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="insert-counters-") as folder:
        clickhouse = ClickHouse(f"chdb://{folder}")
        await clickhouse.open()
        await migrations.apply(clickhouse, migrations.discover())
        await clickhouse.command("CREATE TABLE one_row (x UInt64) ENGINE = MergeTree ORDER BY x")
        await clickhouse.command("CREATE TABLE usage_null AS usage_events ENGINE = Null")
        if kind == "usage_events without the view":
            await clickhouse.command("DROP VIEW usage_hourly_mv")
        await clickhouse.command("SYSTEM STOP MERGES")
        offset = 0

        async def insert(n: int) -> None:
            nonlocal offset
            if kind == "one-row MergeTree":
                sql = f"INSERT INTO one_row SETTINGS max_threads = 1 VALUES ({n})"  # noqa: S608 - an int
                await clickhouse.command(sql)
                return
            batch = [(_event(offset + i), 0, offset + i) for i in range(events)]
            offset += events
            if kind != "Null table":
                await sink.insert(clickhouse, batch, f"token-{n}")
                return
            # What sink.insert runs, into a table that keeps nothing.
            await clickhouse.insert_decoded(
                "usage_null",
                sink.COLUMNS,
                sink.SELECT,
                sink.FORMAT,
                sink.encode(batch),
                settings=dict(sink.ONE_THREAD),
            )

        async def counters() -> dict[str, int]:
            rows = await clickhouse.rows("SELECT event, value FROM system.events", {}, None)
            return {str(name): int(value) for name, value in rows}

        await insert(-1)
        before = await counters()
        for n in range(inserts):
            await insert(n)
        after = await counters()
        await clickhouse.close()
    grown = {name: (after.get(name, 0) - before.get(name, 0)) / inserts for name in COUNTERS}
    result: dict[str, object] = {
        "insert": kind,
        "events": 1 if kind == "one-row MergeTree" else events,
    }
    for name, label in COUNTERS.items():
        result[label] = round(grown[name] / 1000, 2)
    result["cpu_ms"] = round(
        (grown["UserTimeMicroseconds"] + grown["SystemTimeMicroseconds"]) / 1000, 2
    )
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inserts", type=int, default=40)
    parser.add_argument("--events", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    for _ in range(args.rounds):
        for kind in KINDS:
            print(json.dumps(await _kind(kind, args.inserts, args.events)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
