"""Usage schema migrations that reshape what analysts read, against the real
engine (embedded ClickHouse): the numbers read before a migration are the
numbers read after it."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from switchboard.usage.v1 import events_pb2, usage_pb2
from switchboard_common.ids import uuid7
from switchboard_usage import migrations
from switchboard_usage.clickhouse import ClickHouse
from switchboard_usage.migrations import Migration
from switchboard_usage.sink import insert

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

DAILY = (
    "SELECT day, key_name, model, status, sum(requests), sum(prompt_tokens), "
    "sum(completion_tokens), sum(total_tokens), sum(total_cost_nanos) "
    "FROM usage_daily GROUP BY day, key_name, model, status ORDER BY day, key_name, model, status"
)


def _event(n: int, when: dt.datetime) -> events_pb2.UsageEvent:
    record = usage_pb2.UsageRecord(
        event_id=uuid7(),
        request_id=f"req-{n}",
        key_name=f"team-{n % 3}",
        model=("gpt", "claude")[n % 2],
        provider="mock",
        operation=usage_pb2.OPERATION_CHAT,
        status=(usage_pb2.USAGE_STATUS_OK, usage_pb2.USAGE_STATUS_ERROR)[n % 5 == 0],
        prompt_tokens=10 + n,
        completion_tokens=n,
        total_tokens=10 + 2 * n,
    )
    record.start_time.FromDatetime(when)
    record.end_time.FromDatetime(when)
    return events_pb2.UsageEvent(record=record, total_cost_nanos=1000 * n, currency="USD")


@contextlib.asynccontextmanager
async def _just_before(tmp_path: Path, name: str) -> AsyncIterator[tuple[ClickHouse, Migration]]:
    """An embedded ClickHouse migrated up to the migration `name`, and that migration."""
    schema = migrations.discover()
    (migration,) = [m for m in schema if m.name == name]
    ch = ClickHouse(f"chdb://{tmp_path}/ch")
    await ch.open()
    try:
        await migrations.apply(ch, [m for m in schema if m.version < migration.version])
        yield ch, migration
    finally:
        await ch.close()


async def test_usage_daily_as_a_view_over_usage_hourly_reads_the_same(tmp_path: Path) -> None:
    # Three days, several hours each, so a day sums hours and the hours of one
    # day never leak into another.
    start = dt.datetime(2026, 3, 1, 22, tzinfo=dt.UTC)
    events = [_event(n, start + dt.timedelta(hours=n % 50, minutes=n % 60)) for n in range(120)]
    rows = [(e.SerializeToString(), 0, offset) for offset, e in enumerate(events)]
    async with _just_before(tmp_path, "daily_from_hourly") as (ch, daily_view):
        await insert(ch, rows[:60], "first")
        before = await ch.rows(DAILY)
        assert len({row[0] for row in before}) == 3

        assert daily_view.version in await migrations.apply(ch)
        assert await ch.rows(DAILY) == before
        engine = (
            "SELECT engine FROM system.tables "
            "WHERE database = currentDatabase() AND name = {n:String}"
        )
        assert await ch.rows(engine, {"n": "usage_daily"}) == [("View",)]

        # New rows reach the view through usage_hourly alone, and re-running the
        # migration's statements (a half-finished earlier run) changes nothing.
        await insert(ch, rows[60:], "second")
        for statement in daily_view.statements():
            await ch.command(statement)
        totals = await ch.rows(
            "SELECT sum(requests), sum(total_tokens), sum(total_cost_nanos) FROM usage_daily"
        )
        assert totals == [
            (
                len(events),
                sum(e.record.total_tokens for e in events),
                sum(e.total_cost_nanos for e in events),
            )
        ]
        per_day = await ch.rows(
            "SELECT day, sum(requests) FROM usage_daily GROUP BY day ORDER BY day"
        )
        expected: dict[dt.date, int] = {}
        for e in events:
            day = e.record.start_time.ToDatetime(dt.UTC).date()
            expected[day] = expected.get(day, 0) + 1
        assert per_day == sorted(expected.items())


async def test_the_flushed_tables_merge_wider_and_read_the_same(tmp_path: Path) -> None:
    """0011 sets merge_selector_base on the tables every flush writes to; the
    rows read the same before and after, and running it again changes nothing."""
    start = dt.datetime(2026, 3, 1, 22, tzinfo=dt.UTC)
    events = [_event(n, start + dt.timedelta(hours=n % 5)) for n in range(40)]
    rows = [(e.SerializeToString(), 0, offset) for offset, e in enumerate(events)]
    async with _just_before(tmp_path, "merge_selector_base") as (ch, wider):
        await insert(ch, rows, "first")
        before = await ch.rows(DAILY)
        assert wider.version in await migrations.apply(ch)
        for statement in wider.statements():
            await ch.command(statement)
        assert await ch.rows(DAILY) == before
        for table in ("usage_events", "usage_hourly"):
            (found,) = await ch.rows(
                "SELECT engine_full FROM system.tables "
                "WHERE database = currentDatabase() AND name = {n:String}",
                {"n": table},
            )
            assert "merge_selector_base = 10" in found[0], found
