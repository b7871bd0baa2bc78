"""What one usage-sink flush costs the embedded ClickHouse, and what in it:
the sink's own queries (as `switchboard_usage.sink` runs them) on the shipped
schema, on the schema before migration 0010, with the dedup query the sink ran
on every flush before it kept the ids it stored lately in memory, with parts of
the shipped schema taken away, and into a Null table (nothing written: what
reading the payloads and planning the insert cost). Each variant runs in a
process of its own, on a fresh embedded ClickHouse (one process that opens one
engine after another reads each later one dearer), optionally holding --prefill rows first
(as a sink that has run a while does), with flushes paced at --rate a second
(as a loaded sink flushes; 0: back to back). Per flush: wall time, CPU by
thread (ClickHouse's own threads name themselves; `python` is the thread that
called it and the event loop's), the merges the flushes set off included, and
the p99 delay of a 1 ms timer on the event loop meanwhile (the GIL is released
while ClickHouse works if it stays near a millisecond), and the active parts
left at the end (merges put off rather than saved would show there). Prints
one JSON line per variant; --rounds repeats them, interleaved; --variants 1 2
runs only those (numbered as listed in VARIANTS).

    PYTHONPATH=services:gen python bench/flush_cost.py --flushes 80 --events 25 \
        --rate 10 --prefill 60000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import subprocess
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
# from that schema and the sink's flush, or adds to it ("select": the dedup
# query over the batch's event-id range, which the sink now runs only for ids
# older than its memory of what it stored).
VARIANTS: dict[str, tuple[int | None, tuple[str, ...]]] = {
    "shipped (merge_selector_base 10, duplicates told from memory)": (None, ()),
    "before 0011 (merge_selector_base 5)": (10, ()),
    "a dedup query every flush": (None, ("select",)),
    "before 0010 (usage_daily materialized), a dedup query every flush": (9, ("select",)),
    "without usage_hourly's view": (None, ("DROP VIEW usage_hourly_mv",)),
    # What is left when no part is written: reading the payloads, and
    # analysing and planning the INSERT … SELECT.
    "into a Null table (no part, no view)": (
        None,
        (
            "DROP VIEW usage_hourly_mv",
            "CREATE TABLE usage_events_null AS usage_events ENGINE = Null",
            "EXCHANGE TABLES usage_events AND usage_events_null",
        ),
    ),
}
PREFILL_BATCH = 2000
SETTLE_S = 3.0


async def _variant(
    name: str, upto: int | None, changes: tuple[str, ...], args: argparse.Namespace
) -> dict[str, Any]:
    flushes, events = args.flushes, args.events
    with tempfile.TemporaryDirectory(prefix="flush-cost-") as folder:
        clickhouse = ClickHouse(f"chdb://{folder}")
        await clickhouse.open()
        schema = [m for m in migrations.discover() if upto is None or m.version <= upto]
        await migrations.apply(clickhouse, schema)
        for statement in changes:
            if statement != "select":
                await clickhouse.command(statement)
        offset = 0
        for n in range(args.prefill // PREFILL_BATCH):
            rows = [(_event(offset + i), 0, offset + i) for i in range(PREFILL_BATCH)]
            offset += PREFILL_BATCH
            await sink.insert(clickhouse, rows, f"prefill-{n}")

        async def flush(token: str) -> None:
            nonlocal offset
            batch = [(_event(offset + i), 0, offset + i) for i in range(events)]
            offset += events
            if "select" in changes:
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
        began = time.perf_counter()
        for n in range(flushes):
            if args.rate:
                await asyncio.sleep(max(0.0, began + n / args.rate - time.perf_counter()))
            start = time.perf_counter()
            await flush(f"flush-{n}")
            walls.append(time.perf_counter() - start)
        # The merges the flushes set off run after them: count them too.
        await asyncio.sleep(SETTLE_S)
        after = run.thread_ticks(os.getpid())
        running = False
        await ticks
        # Merges put off would show as parts left: the saving must not be that.
        parts = await clickhouse.rows(
            "SELECT table, count() FROM system.parts WHERE active "
            "AND database = currentDatabase() AND table IN ('usage_events', 'usage_hourly') "
            "GROUP BY table ORDER BY table"
        )
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
        "active_parts": dict(parts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flushes", type=int, default=60)
    parser.add_argument("--events", type=int, default=15)
    parser.add_argument("--rate", type=float, default=0.0, help="flushes a second (0: no pause)")
    parser.add_argument("--prefill", type=int, default=0, help="rows stored before timing")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--variants", nargs="+", type=int, help="numbers, from 1 (default: all)")
    parser.add_argument("--only", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.only:
        upto, changes = VARIANTS[args.only]
        print(json.dumps(asyncio.run(_variant(args.only, upto, changes, args))), flush=True)
        return
    names = list(VARIANTS)
    chosen = [names[n - 1] for n in args.variants] if args.variants else names
    for _ in range(args.rounds):
        for name in chosen:
            subprocess.run([sys.executable, __file__, *sys.argv[1:], "--only", name], check=True)


if __name__ == "__main__":
    main()
