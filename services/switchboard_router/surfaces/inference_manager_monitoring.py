"""Seed API 004's monitoring routes, read from ClickHouse through the services
that own the data: GET /api/monitoring/performance (per-model totals and
response times from the usage ledger, on the caller's behalf so a client key
sees its own traffic; GPU utilization from the gpu service's history) and
GET /api/monitoring/metrics (GPU, host CPU, host memory or model series at
1m/5m/1h/1d).

Host CPU and memory history is the gpu service's host samples, stored in
ClickHouse beside the GPU samples (host_samples) and read through the same
history RPC (QueryGpuHistory, metrics host_*); so is the performance "system"
block's, which falls back to the latest sample only while nothing is stored."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections import defaultdict
from typing import Any

import grpc
from google.api import httpbody_pb2

from switchboard.gpu.v1 import gpu_pb2
from switchboard.router.v1 import inference_manager_pb2 as pb
from switchboard.usage.v1 import usage_pb2
from switchboard_common.errors import SwitchboardError, from_rpc_error
from switchboard_router.surfaces.inference_manager_models import CALL_TIMEOUT_S, rendered_as
from switchboard_router.surfaces.inference_manager_shapes import (
    ValidationFailed,
    answer,
    timestamp,
)
from switchboard_router.surfaces.inference_manager_system import System

Context = grpc.aio.ServicerContext[Any, Any]
# time_range → (its length, the history interval that averages it in few buckets).
TIME_RANGES = {
    "1h": (dt.timedelta(hours=1), "1m"),
    "24h": (dt.timedelta(hours=24), "5m"),
    "7d": (dt.timedelta(days=7), "1h"),
    "30d": (dt.timedelta(days=30), "1d"),
}
# metric_type → the host metrics it charts (QueryGpuHistory's host_* names).
HOST_SERIES = {
    "cpu": ("host_cpu_percent",),
    "memory": ("host_memory_percent", "host_memory_used_mib", "host_memory_total_mib"),
}
INTERVALS = ("1m", "5m", "1h", "1d")


def _when(value: str, field: str, default: dt.datetime) -> dt.datetime:
    if not value:
        return default
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationFailed(field, f"{field} must be an ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Monitoring(System):
    """InferenceManagerService's monitoring RPCs."""

    async def _as_caller(self, call: Any, request: Any, context: Context) -> Any:
        """A usage query with the caller's own credentials (its key's traffic only)."""
        metadata = tuple(
            (name, value)
            for name, value in context.invocation_metadata() or ()
            if name in ("authorization", "x-api-key")
        )
        try:
            return await call(request, timeout=CALL_TIMEOUT_S, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, "usage") from None

    async def _gpu_history(
        self, start: dt.datetime, end: dt.datetime, interval: str, metric: str
    ) -> list[gpu_pb2.GpuHistoryPoint]:
        reply = await self._call(
            "gpu",
            self.gpus.QueryGpuHistory,
            gpu_pb2.QueryGpuHistoryRequest(
                start=_rfc3339(start), end=_rfc3339(end), interval=interval, metric=metric
            ),
        )
        return list(reply.points)

    async def GetMonitoringPerformance(
        self, request: pb.GetMonitoringPerformanceRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        with rendered_as(request.model_id):
            time_range = request.time_range or "1h"
            if time_range not in TIME_RANGES:
                raise ValidationFailed("time_range", "time_range must be 1h, 24h, 7d or 30d")
            perf = await self._as_caller(
                self.usage.GetUsagePerformance,
                usage_pb2.GetUsagePerformanceRequest(window=time_range, model=request.model_id),
                context,
            )
            models = []
            for name, measured in sorted(perf.by_model.items()):
                total = int(measured.total_requests)
                ok = round(total * measured.success_rate)
                latency = measured.latency_ms
                models.append(
                    {
                        "model_id": name,
                        "model_name": name,
                        "total_requests": total,
                        "successful_requests": ok,
                        "failed_requests": total - ok,
                        # Seconds, as the document's figures.
                        "avg_response_time": round(latency.average / 1000, 4),
                        "max_response_time": round(latency.max / 1000, 4),
                        "min_response_time": round(latency.min / 1000, 4),
                        "requests_per_second": round(measured.requests_per_second, 4),
                        "error_rate": round(measured.error_rate, 4),
                    }
                )
            return answer(
                {
                    "time_range": time_range,
                    "models": models,
                    "system": await self._system(time_range),
                }
            )

    async def _system(self, time_range: str) -> dict[str, Any]:
        """Sample-weighted means over the range, from the stored history."""
        now = dt.datetime.now(dt.UTC)
        length, interval = TIME_RANGES[time_range]

        async def mean(metric: str) -> float | None:
            try:
                points = await self._gpu_history(now - length, now, interval, metric)
            except SwitchboardError:
                return None
            samples = sum(p.samples for p in points)
            return sum(p.avg * p.samples for p in points) / samples if samples else None

        cpu, memory, gpu = await asyncio.gather(
            mean("host_cpu_percent"), mean("host_memory_percent"), mean("utilization_gpu_percent")
        )
        if cpu is None or memory is None:
            # Nothing stored yet (a stack just started): the latest sample.
            node = await self._node_status()
            host = node.host if node is not None else gpu_pb2.HostMetrics()
            cpu = host.cpu_percent if cpu is None else cpu
            memory = host.memory_percent if memory is None else memory
        return {
            "avg_cpu_percent": round(cpu, 1),
            "avg_memory_percent": round(memory, 1),
            "avg_gpu_utilization": round(gpu or 0.0, 1),
        }

    async def GetMonitoringMetrics(
        self, request: pb.GetMonitoringMetricsRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        with rendered_as():
            kind = request.metric_type or "gpu"
            if kind not in ("gpu", "cpu", "memory", "model"):
                raise ValidationFailed(
                    "metric_type", "metric_type must be gpu, cpu, memory or model"
                )
            interval = request.interval or "1m"
            if interval not in INTERVALS:
                raise ValidationFailed("interval", "interval must be 1m, 5m, 1h or 1d")
            now = dt.datetime.now(dt.UTC)
            end = _when(request.end_time, "end_time", now)
            start = _when(request.start_time, "start_time", end - dt.timedelta(hours=1))
            if start >= end:
                raise ValidationFailed("start_time", "start_time must be before end_time")
            if kind in HOST_SERIES:
                return answer(await self._host_metrics(kind, start, end, interval))
            if kind == "gpu":
                return answer(await self._gpu_metrics(start, end, interval))
            return answer(await self._model_metrics(start, end, interval, now))

    async def _gpu_metrics(
        self, start: dt.datetime, end: dt.datetime, interval: str
    ) -> dict[str, Any]:
        # One after the other, utilization first: samples stored meanwhile can
        # only add buckets to the memory series, which are left out below (a
        # new bucket with memory and no utilization read as 0 % before).
        utilization = await self._gpu_history(start, end, interval, "utilization_gpu_percent")
        memory = await self._gpu_history(start, end, interval, "memory_used_mib")
        # One point per bucket: the mean over the node's GPUs, memory summed.
        rows: dict[dt.datetime, dict[str, float]] = defaultdict(dict)
        for point in utilization:
            row = rows[point.bucket_start.ToDatetime()]
            row["n"] = row.get("n", 0) + 1
            row["util"] = row.get("util", 0) + point.avg
            row["peak"] = max(row.get("peak", 0), point.max)
        for point in memory:
            bucket = rows.get(point.bucket_start.ToDatetime())
            if bucket is not None:
                bucket["memory"] = bucket.get("memory", 0) + point.avg
        averages = [round(row.get("util", 0) / row.get("n", 1), 1) for row in rows.values()]
        metrics = [
            {
                "timestamp": timestamp(bucket.replace(tzinfo=dt.UTC)),
                "gpu_utilization": round(row.get("util", 0) / row.get("n", 1), 1),
                "gpu_memory_used": round(row.get("memory", 0)),
            }
            for bucket, row in sorted(rows.items())
        ]
        return {
            "metrics": metrics,
            "summary": {
                "avg_gpu_utilization": round(sum(averages) / len(averages), 1) if averages else 0,
                "max_gpu_utilization": max((r.get("peak", 0) for r in rows.values()), default=0),
            },
        }

    async def _host_metrics(
        self, kind: str, start: dt.datetime, end: dt.datetime, interval: str
    ) -> dict[str, Any]:
        """One point per bucket over every node: percentages are the mean of
        the nodes' means, MiB the sum of them; max is the highest reading."""
        names = HOST_SERIES[kind]
        series = await asyncio.gather(
            *(self._gpu_history(start, end, interval, name) for name in names)
        )
        rows: dict[dt.datetime, dict[str, float]] = defaultdict(dict)
        for name, points in zip(names, series, strict=True):
            for reading in points:
                row = rows[reading.bucket_start.ToDatetime()]
                row[f"{name}/n"] = row.get(f"{name}/n", 0) + 1
                row[name] = row.get(name, 0) + reading.avg
                row[f"{name}/max"] = max(row.get(f"{name}/max", 0), reading.max)
        percent = names[0]
        field = percent.removeprefix("host_")

        def mean(row: dict[str, float]) -> float:
            return row.get(percent, 0) / row.get(f"{percent}/n", 1)

        metrics = []
        for bucket, row in sorted(rows.items()):
            if f"{percent}/n" not in row:
                continue
            point: dict[str, Any] = {
                "timestamp": timestamp(bucket.replace(tzinfo=dt.UTC)),
                field: round(mean(row), 1),
            }
            if kind == "memory":
                point["memory_used"] = round(row.get("host_memory_used_mib", 0))
                point["memory_total"] = round(row.get("host_memory_total_mib", 0))
            metrics.append(point)
        means = [mean(row) for row in rows.values() if f"{percent}/n" in row]
        return {
            "metrics": metrics,
            "summary": {
                f"avg_{field}": round(sum(means) / len(means), 1) if means else 0,
                f"max_{field}": round(
                    max((row.get(f"{percent}/max", 0) for row in rows.values()), default=0), 1
                ),
            },
        }

    async def _model_metrics(
        self, start: dt.datetime, end: dt.datetime, interval: str, now: dt.datetime
    ) -> dict[str, Any]:
        minutes = max(1, math.ceil((now - start).total_seconds() / 60))
        # The usage service takes at most four digits of a unit.
        window = f"{minutes}m" if minutes <= 9999 else f"{math.ceil(minutes / 60)}h"
        series = await self._call(
            "usage",
            self.usage.GetUsageTimeseries,
            usage_pb2.GetUsageTimeseriesRequest(window=window, interval=interval),
        )
        perf = await self._call(
            "usage",
            self.usage.GetUsagePerformance,
            usage_pb2.GetUsagePerformanceRequest(window=window),
        )
        metrics: list[dict[str, Any]] = [
            {
                "timestamp": timestamp(p.time.ToDatetime().replace(tzinfo=dt.UTC)),
                "model_id": p.model,
                "requests": int(p.requests),
                "tokens": int(p.tokens),
            }
            for p in series.points
            if start <= p.time.ToDatetime().replace(tzinfo=dt.UTC) + _STEP[interval]
            and p.time.ToDatetime().replace(tzinfo=dt.UTC) <= end
        ]
        return {
            "metrics": metrics,
            "summary": {
                "total_requests": sum(m["requests"] for m in metrics),
                "avg_response_time": round(perf.latency_ms.average / 1000, 4),
            },
        }


_STEP = {
    "1m": dt.timedelta(minutes=1),
    "5m": dt.timedelta(minutes=5),
    "1h": dt.timedelta(hours=1),
    "1d": dt.timedelta(days=1),
}
