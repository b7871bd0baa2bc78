"""The usage APIs' questions, answered in ClickHouse. Every read goes through
FINAL so a duplicate that slipped past the sink can never be counted."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from switchboard.usage.v1 import usage_pb2
from switchboard_common.errors import R, SwitchboardError
from switchboard_usage.clickhouse import ClickHouse

MAX_RANGE_DAYS = 366
_WINDOW = re.compile(r"^(\d{1,4})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
NANOS = 1_000_000_000


def _date(value: str, name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST, f"{name} must be a date as YYYY-MM-DD", param=name
        ) from None


def parse_window(window: str) -> int:
    match = _WINDOW.match(window or "1h")
    if not match or int(match[1]) == 0:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST,
            "window must be a duration such as 15m, 1h or 7d",
            param="window",
        )
    seconds = int(match[1]) * _UNIT_S[match[2]]
    if seconds > MAX_RANGE_DAYS * 86400:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST,
            f"window must be at most {MAX_RANGE_DAYS}d",
            param="window",
        )
    return seconds


async def summary(
    ch: ClickHouse, request: usage_pb2.GetUsageSummaryRequest
) -> usage_pb2.GetUsageSummaryResponse:
    today = dt.datetime.now(dt.UTC).date()
    start = _date(request.start, "start") if request.start else today
    end = _date(request.end, "end") if request.end else start
    if end < start:
        raise SwitchboardError(R.ERROR_REASON_INVALID_REQUEST, "end is before start", param="end")
    if (end - start).days > MAX_RANGE_DAYS:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST, f"the range is over {MAX_RANGE_DAYS} days", param="end"
        )
    params: dict[str, Any] = {
        "start": dt.datetime.combine(start, dt.time(), dt.UTC),
        "end": dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), dt.UTC),
        "model": request.model,
    }
    rows = await ch.rows(
        "SELECT model, uniqExact(request_id), sum(total_tokens), sum(total_cost_nanos), "
        "any(currency) FROM usage_events FINAL "
        "WHERE start_time >= {start:DateTime64(3)} AND start_time < {end:DateTime64(3)} "
        "AND ({model:String} = '' OR model = {model:String}) GROUP BY model ORDER BY model",
        params,
    )
    total = await ch.rows(
        "SELECT uniqExact(request_id) FROM usage_events FINAL "
        "WHERE start_time >= {start:DateTime64(3)} AND start_time < {end:DateTime64(3)} "
        "AND ({model:String} = '' OR model = {model:String})",
        params,
    )
    out = usage_pb2.GetUsageSummaryResponse(
        period=usage_pb2.Period(start=start.isoformat(), end=end.isoformat()),
        total_requests=float(total[0][0]) if total else 0.0,
        currency=rows[0][4] if rows else "USD",
    )
    for model, requests, tokens, cost_nanos, _ in rows:
        out.by_model[model].requests = float(requests)
        out.by_model[model].tokens = float(tokens)
        out.by_model[model].cost = cost_nanos / NANOS
        out.total_tokens += float(tokens)
        out.total_cost += cost_nanos / NANOS
    return out


_PERF = (
    "SELECT GROUP_EXPR, count(), countIf(status = 'ok'), "
    "quantilesExactIf(0.5, 0.95, 0.99)(latency_ms, status = 'ok'), "
    "quantilesExactIf(0.5, 0.95, 0.99)(ttft_ms, status = 'ok' AND stream), "
    "sum(completion_tokens) FROM usage_events FINAL "
    "WHERE start_time >= now64(3) - toIntervalSecond({window:UInt32}) "
    "AND ({model:String} = '' OR model = {model:String}) TAIL"
)


def _percentiles(values: list[float]) -> usage_pb2.LatencyPercentiles:
    if not values or any(v != v for v in values):  # NaN when there was nothing to rank
        return usage_pb2.LatencyPercentiles()
    return usage_pb2.LatencyPercentiles(p50=values[0], p95=values[1], p99=values[2])


async def performance(
    ch: ClickHouse, request: usage_pb2.GetUsagePerformanceRequest
) -> usage_pb2.GetUsagePerformanceResponse:
    seconds = parse_window(request.window)
    params = {"window": seconds, "model": request.model}
    out = usage_pb2.GetUsagePerformanceResponse(window=request.window or "1h")
    overall = await ch.rows(_PERF.replace("GROUP_EXPR", "''").replace("TAIL", ""), params)
    per_model = await ch.rows(
        _PERF.replace("GROUP_EXPR", "model").replace("TAIL", "GROUP BY model ORDER BY model"),
        params,
    )
    for _, count, ok, latency, ttft, completion in overall:
        if not count:
            break
        out.total_requests = float(count)
        out.success_rate = ok / count
        out.error_rate = 1 - ok / count
        out.requests_per_second = count / seconds
        out.output_tokens_per_second = completion / seconds
        out.latency_ms.CopyFrom(_percentiles(latency))
        out.ttft_ms.CopyFrom(_percentiles(ttft))
    for name, count, ok, latency, ttft, _ in per_model:
        model = out.by_model[name]
        model.total_requests = float(count)
        model.success_rate = ok / count
        model.error_rate = 1 - ok / count
        model.requests_per_second = count / seconds
        model.latency_ms.CopyFrom(_percentiles(latency))
        model.ttft_ms.CopyFrom(_percentiles(ttft))
    return out


async def spend(ch: ClickHouse, request: usage_pb2.GetSpendRequest) -> tuple[float, str]:
    if bool(request.key_name) == bool(request.model):
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST,
            "give exactly one of key_name or model",
            param="key_name",
        )
    since = (
        request.since.ToDatetime(tzinfo=dt.UTC)
        if request.HasField("since")
        else dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    )
    rows = await ch.rows(
        "SELECT sum(total_cost_nanos), any(currency) FROM usage_events FINAL "
        "WHERE start_time >= {since:DateTime64(3)} "
        "AND (({key:String} != '' AND key_name = {key:String}) "
        "OR ({model:String} != '' AND model = {model:String}))",
        {"since": since, "key": request.key_name, "model": request.model},
    )
    nanos, currency = rows[0] if rows else (0, "USD")
    return (nanos or 0) / NANOS, currency or "USD"
