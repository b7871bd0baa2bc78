"""Seed 004's GET /api/monitoring/metrics for metric_type cpu and memory, a
client written from the document with plain httpx, through the real stack:
the gpu service samples the node (psutil) beside its GPUs, the samples go
through the broker into ClickHouse (host_samples), and the series are read
back from there, over the document's start_time/end_time and interval."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

from tests.conftest import eventually
from tests.e2e.seeds.test_004_inference_manager import TIMESTAMP, WAIT_S, api, stack004

pytestmark = [pytest.mark.e2e, pytest.mark.serial]
__all__ = ["api", "stack004"]  # module fixtures: a stack of this module's own


def _iso(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _at(timestamp: str) -> dt.datetime:
    return dt.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def _series(
    api: httpx.Client, kind: str, interval: str, start: dt.datetime, end: dt.datetime
) -> dict[str, Any]:
    reply = api.get(
        "/monitoring/metrics",
        params={
            "metric_type": kind,
            "interval": interval,
            "start_time": _iso(start),
            "end_time": _iso(end),
        },
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    assert set(body) == {"metrics", "summary"}, body
    return body


def _filled(
    api: httpx.Client, kind: str, interval: str, start: dt.datetime, end: dt.datetime
) -> dict[str, Any]:
    body = _series(api, kind, interval, start, end)
    assert body["metrics"], body  # polled: not stored yet
    return body


def test_cpu_and_memory_history_from_clickhouse(api: httpx.Client) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    start, end = now - dt.timedelta(minutes=10), now + dt.timedelta(minutes=2)

    cpu = eventually(lambda: _filled(api, "cpu", "1m", start, end), timeout=WAIT_S)
    first_minute = start.replace(second=0)
    stamps = [m["timestamp"] for m in cpu["metrics"]]
    assert all(TIMESTAMP.match(s) for s in stamps), stamps
    assert stamps == sorted(set(stamps))
    assert all(first_minute <= _at(s) < end for s in stamps), stamps
    for point in cpu["metrics"]:
        assert set(point) == {"timestamp", "cpu_percent"}, point
        assert 0 <= point["cpu_percent"] <= 100, point
    summary = cpu["summary"]
    assert set(summary) == {"avg_cpu_percent", "max_cpu_percent"}, summary
    assert 0 <= summary["avg_cpu_percent"] <= summary["max_cpu_percent"] <= 100
    assert max(p["cpu_percent"] for p in cpu["metrics"]) <= summary["max_cpu_percent"]

    memory = eventually(lambda: _filled(api, "memory", "5m", start, end), timeout=WAIT_S)
    for point in memory["metrics"]:
        assert set(point) == {"timestamp", "memory_percent", "memory_used", "memory_total"}
        assert _at(point["timestamp"]).minute % 5 == 0, point
        assert 0 < point["memory_percent"] <= 100, point
        assert 0 < point["memory_used"] <= point["memory_total"], point
    assert set(memory["summary"]) == {"avg_memory_percent", "max_memory_percent"}
    assert 0 < memory["summary"]["avg_memory_percent"] <= memory["summary"]["max_memory_percent"]

    # History, not the latest reading: before this stack started, nothing.
    earlier = _series(api, "memory", "1m", now - dt.timedelta(hours=3), now - dt.timedelta(hours=2))
    assert earlier == {
        "metrics": [],
        "summary": {"avg_memory_percent": 0, "max_memory_percent": 0},
    }

    # The performance block's system averages come from the same history.
    perf = api.get("/monitoring/performance", params={"time_range": "1h"})
    assert perf.status_code == 200, perf.text
    system = perf.json()["system"]
    assert 0 <= system["avg_cpu_percent"] <= 100
    assert 0 < system["avg_memory_percent"] <= 100

    # The document's error shape for what it does not list.
    refused = api.get("/monitoring/metrics", params={"metric_type": "cpu", "interval": "2m"})
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "INVALID_REQUEST"
