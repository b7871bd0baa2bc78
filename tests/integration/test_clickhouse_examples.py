"""The example queries in deploy/clickhouse/README.md, run against the real
schema (the shipped migrations, embedded engine) and a small known dataset, so
that the documentation cannot drift from what ClickHouse accepts and answers."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from switchboard.usage.v1 import events_pb2, usage_pb2
from switchboard_usage import migrations
from switchboard_usage.clickhouse import ClickHouse
from switchboard_usage.sink import insert

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "deploy" / "clickhouse" / "README.md"
KEYS = ("team-a", "team-b", "team-c")
MODELS = ("fast-chat", "smart-chat")
PROVIDERS = ("openai-main", "dashscope")
NANOS = 1_000_000_000


def examples() -> dict[str, str]:
    """Each example's heading → its SQL, in README order; every ```sql block in
    the README must be one of them."""
    text = README.read_text()
    _, section = text.split("\n## Example queries\n")
    found: dict[str, str] = {}
    for chunk in section.split("\n### ")[1:]:
        title, body = chunk.split("\n", 1)
        (sql,) = re.findall(r"```sql\n(.*?)```", body, re.S)
        found[title] = sql.strip()
    assert text.count("```sql") == len(found)
    return found


def _event(
    i: int,
    start: dt.datetime,
    *,
    request: int | None = None,
    attempt: int = 0,
    status: int = usage_pb2.USAGE_STATUS_OK,
    model: str | None = None,
) -> events_pb2.UsageEvent:
    """Attempt number i; every field is a function of i so the dataset (and so
    every expected figure) is fixed. Odd costs make truncation visible."""
    ok = status == usage_pb2.USAGE_STATUS_OK
    failed = status == usage_pb2.USAGE_STATUS_ERROR
    stream = i % 3 == 0
    prompt = 100 + 10 * i
    completion = 0 if failed else 20 + i
    requested = MODELS[(request if request is not None else i) % 2]
    record = usage_pb2.UsageRecord(
        event_id=f"0190a000-0000-7000-8000-{i:012x}",
        request_id=f"req-{request if request is not None else i:02d}",
        attempt=attempt,
        key_name=KEYS[(request if request is not None else i) % 3],
        requested_model=requested,
        model=model or requested,
        deployment_id=f"dep-{i % 4}",
        provider=PROVIDERS[(i // 2) % 2],
        upstream_model="upstream-" + (model or requested),
        operation=usage_pb2.OPERATION_CHAT,
        stream=stream,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_tokens=64 if i % 3 == 1 else 0,
        estimated=i % 5 == 0,
        status=status,  # type: ignore[arg-type]
        error_reason="" if ok else "ERROR_REASON_UPSTREAM_ERROR",
        latency_ms=200.0 + 15 * i,
        ttft_ms=50.0 + 10 * i if stream and not failed else 0.0,
        config_version=1,
        router_instance="router-0",
        sequence=i,
    )
    at = start + dt.timedelta(minutes=3 * i)
    record.start_time.FromDatetime(at)
    record.end_time.FromDatetime(at + dt.timedelta(milliseconds=record.latency_ms))
    input_nanos, output_nanos = prompt * 150_001, completion * 600_007
    return events_pb2.UsageEvent(
        record=record,
        input_cost_nanos=input_nanos,
        output_cost_nanos=output_nanos,
        total_cost_nanos=input_nanos + output_nanos,
        currency="USD",
    )


def dataset(start: dt.datetime) -> list[events_pb2.UsageEvent]:
    """30 first attempts, then a retry of request 5 (an error) on the same model
    and a fallback of request 11 (an error) to the other model."""
    statuses = {
        5: usage_pb2.USAGE_STATUS_ERROR,
        11: usage_pb2.USAGE_STATUS_ERROR,
        17: usage_pb2.USAGE_STATUS_ERROR,
        23: usage_pb2.USAGE_STATUS_PARTIAL,
        29: usage_pb2.USAGE_STATUS_CANCELLED,
    }
    events = [
        _event(i, start, status=statuses.get(i, usage_pb2.USAGE_STATUS_OK)) for i in range(30)
    ]
    events.append(_event(30, start, request=5, attempt=1))
    events.append(_event(31, start, request=11, attempt=1, model=MODELS[0]))
    return events


def _by(
    events: list[events_pb2.UsageEvent], key: Callable[[usage_pb2.UsageRecord], Any]
) -> dict[Any, list[events_pb2.UsageEvent]]:
    groups: dict[Any, list[events_pb2.UsageEvent]] = {}
    for event in events:
        groups.setdefault(key(event.record), []).append(event)
    return groups


@pytest.mark.asyncio
async def test_readme_examples_run_and_answer_right(tmp_path: Path) -> None:
    sql = examples()
    assert len(sql) == 10, list(sql)
    for title, text in sql.items():
        # One statement each: clients send a block as one query.
        assert text.upper().startswith("SELECT"), title
        assert ";" not in text, title

    # Two hours back, whole minutes: inside every example's time range, fixed
    # relative to the hour so the hourly and daily groupings are predictable.
    now = dt.datetime.now(dt.UTC)
    start = now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=2)
    events = dataset(start)
    rows = [(event.SerializeToString(), 0, offset) for offset, event in enumerate(events)]

    # One engine for the whole module: chdb lets a process open one path.
    ch = ClickHouse(f"chdb://{tmp_path}/ch")
    await ch.open()
    try:
        assert await migrations.apply(ch) == [m.version for m in migrations.discover()]
        await insert(ch, rows, "batch-1")

        results = {title: await ch.rows(text) for title, text in sql.items()}
        for title, result in results.items():
            assert result, f"{title}: no rows"

        def answer(fragment: str) -> list[tuple[Any, ...]]:
            (title,) = [t for t in results if fragment in t]
            return results[title]

        total_nanos = sum(e.total_cost_nanos for e in events)

        # 1: exact decimal spend, per key and in total, over all attempts.
        spend = answer("Spend by key")
        assert sum(cost for _, _, _, _, cost in spend) == Decimal(total_nanos) / NANOS
        per_key = {
            k: sum(e.total_cost_nanos for e in es)
            for k, es in _by(events, lambda r: r.key_name).items()
        }
        got: dict[str, Decimal] = {}
        for _, key, _, _, cost in spend:
            got[key] = got.get(key, Decimal(0)) + cost
        assert got == {k: Decimal(n) / NANOS for k, n in per_key.items()}
        # The analyst views carry the same exact decimal (migration 0004).
        [(view_cost,)] = await ch.rows("SELECT sum(cost) FROM usage")
        assert view_cost == Decimal(total_nanos) / NANOS
        [(daily_cost,)] = await ch.rows("SELECT sum(cost) FROM usage_by_day")
        assert daily_cost == Decimal(total_nanos) / NANOS

        # 3: failures are error + partial, per provider.
        errors = {provider: failures for provider, _, failures, _, _ in answer("Error rate")}
        expected_errors = {
            p: sum(
                e.record.status in (usage_pb2.USAGE_STATUS_ERROR, usage_pb2.USAGE_STATUS_PARTIAL)
                for e in es
            )
            for p, es in _by(events, lambda r: r.provider).items()
        }
        assert errors == expected_errors

        # 4: ranked by prompt tokens over every attempt, retries included.
        prompts = {
            k: sum(e.record.prompt_tokens for e in es)
            for k, es in _by(events, lambda r: r.key_name).items()
        }
        top = answer("Top keys")
        assert [(k, p) for k, p, _, _ in top] == sorted(prompts.items(), key=lambda kp: -kp[1])

        # 5: the hourly rollup adds up to the raw rows, cost exactly.
        hourly = answer("per model per hour")
        assert sum(r[2] for r in hourly) == len(events)
        assert sum(r[5] for r in hourly) == Decimal(total_nanos) / NANOS

        # 6: 30 requests, 32 attempts; the two retried requests show up.
        retries = answer("Requests vs attempts")
        assert sum(r[1] for r in retries) == 30
        assert sum(r[2] for r in retries) == 32
        assert sum(r[3] for r in retries) == 2

        # 7: only successful streams, with their own TTFT.
        ttft = {model: (streams, p50) for model, streams, p50, _ in answer("first token")}
        for model, es in _by(events, lambda r: r.model).items():
            values = sorted(
                e.record.ttft_ms
                for e in es
                if e.record.stream and e.record.status == usage_pb2.USAGE_STATUS_OK
            )
            # quantileExact takes the element at floor(level * n) of the sorted values.
            assert ttft[model] == (len(values), values[len(values) // 2])

        # 8 and 9: the shares' numerators and denominators.
        cached = {m: (p, c) for m, p, c, _ in answer("Cached-token")}
        assert cached == {
            m: (sum(e.record.prompt_tokens for e in es), sum(e.record.cached_tokens for e in es))
            for m, es in _by(events, lambda r: r.model).items()
        }
        estimated = {p: (n, t, est) for p, _, n, t, est, _ in answer("Estimated-token")}
        assert estimated == {
            p: (
                sum(e.record.estimated for e in es),
                sum(e.record.total_tokens for e in es),
                sum(e.record.total_tokens for e in es if e.record.estimated),
            )
            for p, es in _by(events, lambda r: r.provider).items()
        }

        # 10: every key was active on each day the dataset touches.
        days = {e.record.start_time.ToDatetime().date() for e in events}
        active = {day: keys for day, keys, _ in answer("Daily active keys")}
        assert set(active) == days
        for day in days:
            assert active[day] == len(
                {
                    e.record.key_name
                    for e in events
                    if e.record.start_time.ToDatetime().date() == day
                }
            )

        # Deduplication. A retried insert (same token) is dropped whole...
        count = "SELECT count() FROM usage_events"
        await insert(ch, rows, "batch-1")
        assert await ch.rows(count) == [(len(events),)]
        # ...and a replay that bypassed the sink's filter lands, but FINAL (so
        # the `usage` view) hides it until a merge removes it. The rollups count
        # it again: they are exact only because the sink inserts each id once.
        daily = "SELECT sum(requests) FROM usage_daily"
        (before,) = await ch.rows(daily)
        await insert(ch, rows, "replay")
        assert await ch.rows(count) == [(2 * len(events),)]
        assert await ch.rows(daily) == [(before[0] + len(events),)]
        assert await ch.rows("SELECT count(), uniqExact(request_id) FROM usage") == [
            (len(events), 30)
        ]
        await ch.command("OPTIMIZE TABLE usage_events FINAL")
        assert await ch.rows(count) == [(len(events),)]
        assert await ch.rows("SELECT sum(total_cost_nanos) FROM usage_events FINAL") == [
            (total_nanos,)
        ]
    finally:
        await ch.close()
