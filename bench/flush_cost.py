"""What one usage-sink flush costs the embedded ClickHouse, and what in it:
the sink's own two queries (the dedup SELECT over the batch's event-id range,
then the INSERT … SELECT from a ProtobufList file, as `switchboard_usage.sink`
runs them) on the shipped schema, on the schema before migration 0010, and
with parts of the shipped one taken away, each on a fresh embedded ClickHouse.
Per flush: wall time, CPU by thread (ClickHouse's own threads name
themselves; `python` is the thread that called it and the event loop's), and
the p99 delay of a 1 ms timer on the event loop meanwhile (the GIL is released
while ClickHouse works if it stays near a millisecond). Prints one JSON line
per variant; --rounds repeats them, interleaved.

    PYTHONPATH=services:gen python bench/flush_cost.py --flushes 60 --events 15
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from switchboard_usage import migrations, sink
from switchboard_usage.clickhouse import ClickHouse

sys.path.insert(0, str(Path(__file__).parent))
import run
from sink_bench import _event

TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")
# Per variant: the last migration applied (None: all), and what it takes away
# from that schema and the sink's flush ("select": the dedup SELECT).
VARIANTS: dict[str, tuple[int | None, tuple[str, ...]]] = {
    "shipped": (None, ()),
    # usage_daily a table of its own, fed by a materialized view on every insert.
    "before 0010 (usage_daily materialized)": (9, ()),
    "without the dedup SELECT": (None, ("select",)),
    "without usage_hourly's view": (None, ("DROP VIEW usage_hourly_mv",)),
}
SETTLE_S = 3.0


async def _variant(
    name: str, upto: int | None, removed: tuple[str, ...], flushes: int, events: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="flush-cost-") as folder:
        clickhouse = ClickHouse(f"chdb://{folder}")
        await clickhouse.open()
        schema = [m for m in migrations.discover() if upto is None or m.version <= upto]
        await migrations.apply(clickhouse, schema)
        for statement in removed:
            if statement != "select":
                await clickhouse.command(statement)
        offset = 0

        async def flush(token: str) -> None:
            nonlocal offset
            batch = [(_event(offset + i), 0, offset + i) for i in range(events)]
            offset += events
            if "select" not in removed:
                await clickhouse.rows(
                    sink.STORED_IN_RANGE, {"low": "0", "high": "1"}, sink.ONE_THREAD
                )
            await sink.insert(clickhouse, batch, token)

        for warm in range(3):
            await flush(f"warm-{warm}")
        delays: list[float] = []
        running = True

        async def ticker() -> None:
            while running:
                start = time.perf_counter()
                await asyncio.sleep(0.001)
                delays.append(time.perf_counter() - start - 0.001)

        ticks = asyncio.create_task(ticker())
        before = run.thread_ticks(os.getpid())
        walls = []
        for n in range(flushes):
            start = time.perf_counter()
            await flush(f"flush-{n}")
            walls.append(time.perf_counter() - start)
        # The merges the flushes set off run after them: count them too.
        await asyncio.sleep(SETTLE_S)
        after = run.thread_ticks(os.getpid())
        running = False
        await ticks
        await clickhouse.close()
    by_thread: collections.Counter[str] = collections.Counter()
    for tid, (thread, ticks_now) in after.items():
        by_thread[re.sub(r"\d+$", "", thread)] += ticks_now - before.get(tid, (thread, 0))[1]
    walls.sort()
    delays.sort()
    return {
        "variant": name,
        "events_per_flush": events,
        "wall_ms_p50": round(walls[len(walls) // 2] * 1000, 1),
        "cpu_ms_per_flush": round(sum(by_thread.values()) * TICK_MS / flushes, 1),
        "cpu_ms_by_thread": {
            t: round(n * TICK_MS / flushes, 1) for t, n in by_thread.most_common() if n
        },
        "loop_delay_ms_p99": round(delays[int(len(delays) * 0.99)] * 1000, 2),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flushes", type=int, default=60)
    parser.add_argument("--events", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    for _ in range(args.rounds):
        for name, (upto, removed) in VARIANTS.items():
            result = await _variant(name, upto, removed, args.flushes, args.events)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
