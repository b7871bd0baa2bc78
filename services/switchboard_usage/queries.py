"""The usage APIs' questions, answered in ClickHouse. Every read goes through
FINAL so a duplicate that slipped past the sink can never be counted."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

from switchboard.gpu.v1 import gpu_pb2
from switchboard.registry.v1 import registry_pb2
from switchboard.usage.v1 import events_pb2, usage_pb2
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.gpu_metrics import GPU_METRIC_FIELDS
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


def _keys(key: str | None) -> dict[str, Any]:
    """Query parameters for whose traffic a read covers: one key's (by name),
    or every key's when key is None."""
    return {"all_keys": key is None, "key": key or ""}


async def summary(
    ch: ClickHouse, request: usage_pb2.GetUsageSummaryRequest, key: str | None = None
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
        **_keys(key),
    }
    rows = await ch.rows(
        "SELECT model, uniqExact(request_id), sum(total_tokens), sum(total_cost_nanos), "
        "any(currency) FROM usage_events FINAL "
        "WHERE start_time >= {start:DateTime64(3)} AND start_time < {end:DateTime64(3)} "
        "AND ({model:String} = '' OR model = {model:String}) "
        "AND ({all_keys:Bool} OR key_name = {key:String}) GROUP BY model ORDER BY model",
        params,
    )
    total = await ch.rows(
        "SELECT uniqExact(request_id) FROM usage_events FINAL "
        "WHERE start_time >= {start:DateTime64(3)} AND start_time < {end:DateTime64(3)} "
        "AND ({model:String} = '' OR model = {model:String}) "
        "AND ({all_keys:Bool} OR key_name = {key:String})",
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
    "sum(completion_tokens), avgIf(latency_ms, status = 'ok'), "
    "avgIf(ttft_ms, status = 'ok' AND stream), "
    "minIf(latency_ms, status = 'ok'), maxIf(latency_ms, status = 'ok') FROM usage_events FINAL "
    "WHERE start_time >= now64(3) - toIntervalSecond({window:UInt32}) "
    "AND ({model:String} = '' OR model = {model:String}) "
    "AND ({all_keys:Bool} OR key_name = {key:String}) TAIL"
)


def _percentiles(
    values: list[float], average: float, low: float = 0.0, high: float = 0.0
) -> usage_pb2.LatencyPercentiles:
    if not values or any(v != v for v in values):  # NaN when there was nothing to rank
        return usage_pb2.LatencyPercentiles()
    return usage_pb2.LatencyPercentiles(
        p50=values[0], p95=values[1], p99=values[2], average=average, min=low, max=high
    )


INTERVALS_S = {"1m": 60, "5m": 300, "1h": 3600, "1d": 86400}
MAX_POINTS_PER_MODEL = 2000


async def timeseries(
    ch: ClickHouse, request: usage_pb2.GetUsageTimeseriesRequest, key: str | None = None
) -> usage_pb2.GetUsageTimeseriesResponse:
    window = request.window or "24h"
    interval = request.interval or "1h"
    seconds = parse_window(window)
    step = INTERVALS_S.get(interval)
    if step is None:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST,
            f"interval must be one of {', '.join(INTERVALS_S)}",
            param="interval",
        )
    if seconds // step > MAX_POINTS_PER_MODEL:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST,
            f"{window} at {interval} is over {MAX_POINTS_PER_MODEL} points: pick a longer interval",
            param="interval",
        )
    rows = await ch.rows(
        "SELECT toStartOfInterval(start_time, toIntervalSecond({step:UInt32})) AS bucket, model, "
        "uniqExact(request_id), sum(total_tokens), sum(total_cost_nanos) "
        "FROM usage_events FINAL "
        "WHERE start_time >= now64(3) - toIntervalSecond({window:UInt32}) "
        "AND ({model:String} = '' OR model = {model:String}) "
        "AND ({all_keys:Bool} OR key_name = {key:String}) "
        "GROUP BY bucket, model ORDER BY bucket, model",
        {"step": step, "window": seconds, "model": request.model, **_keys(key)},
    )
    out = usage_pb2.GetUsageTimeseriesResponse(window=window, interval=interval)
    for bucket, model, requests, tokens, cost_nanos in rows:
        point = out.points.add(
            model=model, requests=float(requests), tokens=float(tokens), cost=cost_nanos / 1e9
        )
        point.time.FromDatetime(bucket if bucket.tzinfo else bucket.replace(tzinfo=dt.UTC))
    return out


async def performance(
    ch: ClickHouse, request: usage_pb2.GetUsagePerformanceRequest, key: str | None = None
) -> usage_pb2.GetUsagePerformanceResponse:
    seconds = parse_window(request.window)
    params = {"window": seconds, "model": request.model, **_keys(key)}
    out = usage_pb2.GetUsagePerformanceResponse(window=request.window or "1h")
    overall = await ch.rows(_PERF.replace("GROUP_EXPR", "''").replace("TAIL", ""), params)
    per_model = await ch.rows(
        _PERF.replace("GROUP_EXPR", "model").replace("TAIL", "GROUP BY model ORDER BY model"),
        params,
    )
    for _, count, ok, latency, ttft, completion, latency_avg, ttft_avg, low, high in overall:
        if not count:
            break
        out.total_requests = float(count)
        out.success_rate = ok / count
        out.error_rate = 1 - ok / count
        out.requests_per_second = count / seconds
        out.output_tokens_per_second = completion / seconds
        out.latency_ms.CopyFrom(_percentiles(latency, latency_avg, low, high))
        out.ttft_ms.CopyFrom(_percentiles(ttft, ttft_avg))
    for name, count, ok, latency, ttft, _, latency_avg, ttft_avg, low, high in per_model:
        model = out.by_model[name]
        model.total_requests = float(count)
        model.success_rate = ok / count
        model.error_rate = 1 - ok / count
        model.requests_per_second = count / seconds
        model.latency_ms.CopyFrom(_percentiles(latency, latency_avg, low, high))
        model.ttft_ms.CopyFrom(_percentiles(ttft, ttft_avg))
    return out


async def spend(
    ch: ClickHouse, request: usage_pb2.GetSpendRequest, unconfirmed: Sequence[bytes] = ()
) -> tuple[float, str, float]:
    """(stored cost, currency, pending cost): pending is what the outbox holds
    (`unconfirmed`, UsageEvent payloads) and ClickHouse does not yet, so budgets
    count what is in flight, and a record stored but not yet confirmed counts
    once. One query, so both sides read the same parts."""
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
    floor = int(since.timestamp())
    in_flight: dict[str, int] = {}
    for payload in unconfirmed:
        event = events_pb2.UsageEvent.FromString(payload)
        r = event.record
        matches = (request.key_name and r.key_name == request.key_name) or (
            request.model and r.model == request.model
        )
        if matches and r.start_time.seconds >= floor:
            in_flight[r.event_id] = event.total_cost_nanos
    rows = await ch.rows(
        "SELECT sum(total_cost_nanos), any(currency), "
        "sumIf(total_cost_nanos, has({ids:Array(String)}, event_id)) FROM usage_events FINAL "
        "WHERE start_time >= {since:DateTime64(3)} "
        "AND (({key:String} != '' AND key_name = {key:String}) "
        "OR ({model:String} != '' AND model = {model:String}))",
        {"since": since, "key": request.key_name, "model": request.model, "ids": list(in_flight)},
    )
    nanos, currency, stored_in_flight = rows[0] if rows else (0, "USD", 0)
    pending = sum(in_flight.values()) - (stored_in_flight or 0)
    return (nanos or 0) / NANOS, currency or "USD", pending / NANOS


# GPU history (gpu_samples, gpu_alert_events: schema/0005_gpu_history.sql).

GPU_INTERVALS = {"1m": 60, "5m": 300, "1h": 3600, "1d": 86400}
# A query may ask for at most this many buckets per GPU: a week at 1m is too
# fine to draw and expensive to answer; ask for a coarser interval.
MAX_GPU_BUCKETS = 10_080
DEFAULT_GPU_RANGE = dt.timedelta(hours=1)
DEFAULT_GPU_METRIC = "utilization_gpu_percent"
# Metric → SQL over gpu_samples. Plain columns are GpuDevice's numeric fields.
GPU_METRICS = {name: name for name in GPU_METRIC_FIELDS}
GPU_METRICS["memory_used_percent"] = (
    "if(memory_total_mib > 0, 100 * memory_used_mib / memory_total_mib, NULL)"
)
# Host metrics (host_samples: schema/0009_host_samples.sql), one series per
# node with gpu_uuid '': HostMetrics' fields, prefixed so none is mistaken for
# a GPU reading of the same name (memory_used_mib).
HOST_METRIC_PREFIX = "host_"
HOST_METRICS = {
    f"{HOST_METRIC_PREFIX}{name}": name
    for name in (
        "cpu_percent", "memory_percent", "memory_used_mib", "memory_total_mib",
        "disk_percent", "disk_used_mib", "disk_total_mib", "load_average_1m",
    )
}  # fmt: skip
MAX_GPU_ALERTS = 1000
_GPU_HISTORY = (
    "SELECT toStartOfInterval(time, toIntervalSecond({step:UInt32})) AS bucket, "
    "hostname, gpu_uuid, avg(v), max(v), min(v), count(v) "
    "FROM (SELECT time, hostname, gpu_uuid, METRIC AS v FROM gpu_samples FINAL "
    "WHERE time >= {start:DateTime64(3)} AND time < {end:DateTime64(3)} AND gpu_uuid != '' "
    "AND ({host:String} = '' OR hostname = {host:String}) "
    "AND ({uuid:String} = '' OR gpu_uuid = {uuid:String})) "
    "GROUP BY bucket, hostname, gpu_uuid HAVING count(v) > 0 "
    "ORDER BY hostname, gpu_uuid, bucket"
)
_HOST_HISTORY = (
    "SELECT toStartOfInterval(time, toIntervalSecond({step:UInt32})) AS bucket, "
    "hostname, '', avg(v), max(v), min(v), count(v) "
    "FROM (SELECT time, hostname, METRIC AS v FROM host_samples FINAL "
    "WHERE time >= {start:DateTime64(3)} AND time < {end:DateTime64(3)} "
    "AND ({host:String} = '' OR hostname = {host:String})) "
    "GROUP BY bucket, hostname ORDER BY hostname, bucket"
)
# Each alert once, in its latest state (a resolution outranks the firing).
_GPU_ALERTS = (
    "SELECT COLUMNS FROM ("
    "SELECT COLUMNS FROM gpu_alert_events FINAL "
    "WHERE ({host:String} = '' OR hostname = {host:String}) "
    "AND ({uuid:String} = '' OR gpu_uuid = {uuid:String}) "
    "ORDER BY alert_id, state = 'resolved' DESC LIMIT 1 BY alert_id) "
    "WHERE NOT {active:Bool} OR state = 'firing' "
    "ORDER BY time DESC, alert_id LIMIT {limit:UInt32}"
).replace(
    "COLUMNS",
    "alert_id, state, rule_name, metric, comparator, threshold, severity, hostname, "
    "gpu_uuid, gpu_index, value, message, start_time, time, model",
)


def _instant(value: str, name: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST,
            f"{name} must be an RFC 3339 time such as 2025-01-31T12:00:00Z",
            param=name,
        ) from None
    # No offset: read as UTC, like every time Switchboard stores.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _utc(value: dt.datetime) -> dt.datetime:
    # clickhouse-connect gives naive datetimes for some column types: they are UTC.
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _epoch_s(value: dt.datetime) -> int:
    return int(value.timestamp())


async def gpu_history(
    ch: ClickHouse, request: gpu_pb2.QueryGpuHistoryRequest, now: dt.datetime | None = None
) -> gpu_pb2.QueryGpuHistoryResponse:
    interval = request.interval or "1m"
    step = GPU_INTERVALS.get(interval)
    if step is None:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST,
            f"interval must be one of {', '.join(GPU_INTERVALS)}",
            param="interval",
        )
    metric = request.metric or DEFAULT_GPU_METRIC
    expression = GPU_METRICS.get(metric) or HOST_METRICS.get(metric)
    if expression is None:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST,
            f"metric must be one of {', '.join([*GPU_METRICS, *HOST_METRICS])}",
            param="metric",
        )
    if metric in HOST_METRICS and request.gpu_uuid:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST,
            f"{metric} is a host metric: it has no gpu_uuid",
            param="gpu_uuid",
        )
    template = _HOST_HISTORY if metric in HOST_METRICS else _GPU_HISTORY
    end = _instant(request.end, "end") if request.end else (now or dt.datetime.now(dt.UTC))
    start = _instant(request.start, "start") if request.start else end - DEFAULT_GPU_RANGE
    if end <= start:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST, "end is not after start", param="end"
        )
    # Whole buckets only: a chart's first and last points are then as
    # comparable as the rest.
    first = _epoch_s(start) // step * step
    last = -(-_epoch_s(end) // step) * step
    if last == first:
        last += step
    if (last - first) // step > MAX_GPU_BUCKETS:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST,
            f"{(last - first) // step} buckets of {interval} is over {MAX_GPU_BUCKETS}: "
            "use a larger interval or a shorter range",
            param="interval",
        )
    lo = dt.datetime.fromtimestamp(first, dt.UTC)
    hi = dt.datetime.fromtimestamp(last, dt.UTC)
    rows = await ch.rows(
        template.replace("METRIC", expression),
        {
            "step": step,
            "start": lo,
            "end": hi,
            "host": request.hostname,
            "uuid": request.gpu_uuid,
        },
    )
    out = gpu_pb2.QueryGpuHistoryResponse(metric=metric, interval=interval)
    out.start.FromDatetime(lo)
    out.end.FromDatetime(hi)
    for bucket, hostname, gpu_uuid, avg, high, low, samples in rows:
        point = out.points.add(
            hostname=hostname,
            gpu_uuid=gpu_uuid,
            metric=metric,
            avg=float(avg),
            max=float(high),
            min=float(low),
            samples=int(samples),
        )
        point.bucket_start.FromDatetime(_utc(bucket))
    return out


_ALERT_STATES = {"firing": gpu_pb2.ALERT_STATE_FIRING, "resolved": gpu_pb2.ALERT_STATE_RESOLVED}
_SEVERITIES = {
    k.removeprefix("SEVERITY_").lower(): v for k, v in registry_pb2.Severity.items() if v
}
_COMPARATORS = {
    k.removeprefix("COMPARATOR_").lower(): v for k, v in registry_pb2.Comparator.items() if v
}


async def gpu_alerts(
    ch: ClickHouse, request: gpu_pb2.ListGpuAlertsRequest
) -> gpu_pb2.ListGpuAlertsResponse:
    if request.limit < 0:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST, "limit must not be negative", param="limit"
        )
    rows = await ch.rows(
        _GPU_ALERTS,
        {
            "host": request.hostname,
            "uuid": request.gpu_uuid,
            "active": request.active_only,
            "limit": min(request.limit or 100, MAX_GPU_ALERTS),
        },
    )
    out = gpu_pb2.ListGpuAlertsResponse()
    for (
        alert_id, state, rule_name, metric, comparator, threshold, severity, hostname,
        gpu_uuid, gpu_index, value, message, start_time, time, model,
    ) in rows:  # fmt: skip
        alert = out.alerts.add(
            alert_id=alert_id,
            state=_ALERT_STATES.get(state, gpu_pb2.ALERT_STATE_UNSPECIFIED),
            rule_name=rule_name,
            metric=metric,
            comparator=_COMPARATORS.get(comparator, registry_pb2.COMPARATOR_UNSPECIFIED),
            threshold=threshold,
            severity=_SEVERITIES.get(severity, registry_pb2.SEVERITY_UNSPECIFIED),
            hostname=hostname,
            gpu_uuid=gpu_uuid,
            gpu_index=gpu_index,
            value=value,
            message=message,
            model=model,
        )
        alert.start_time.FromDatetime(_utc(start_time))
        alert.time.FromDatetime(_utc(time))
    return out
