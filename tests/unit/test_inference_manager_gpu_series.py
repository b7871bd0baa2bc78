"""Seed 004's GPU series (GET /api/monitoring/metrics?metric_type=gpu) merges
two history reads, utilization then memory. A sample stored between them adds
a bucket to the memory read only: that bucket is left for the next read, not
shown as 0 % utilization."""

from __future__ import annotations

import datetime as dt

import pytest

from switchboard.gpu.v1 import gpu_pb2
from switchboard_router.surfaces.inference_manager_monitoring import Monitoring

pytestmark = pytest.mark.asyncio
T0 = dt.datetime(2026, 12, 7, 20, 0, tzinfo=dt.UTC)


def _point(minute: int, avg: float) -> gpu_pb2.GpuHistoryPoint:
    point = gpu_pb2.GpuHistoryPoint(avg=avg, max=avg, samples=1)
    point.bucket_start.FromDatetime(T0.replace(tzinfo=None) + dt.timedelta(minutes=minute))
    return point


async def test_a_bucket_stored_between_the_two_reads_is_left_out() -> None:
    history = {
        "utilization_gpu_percent": [_point(0, 78.5)],
        # A minute later a sample landed: the memory read already has it.
        "memory_used_mib": [_point(0, 12288), _point(1, 12288)],
    }

    async def read(
        start: dt.datetime, end: dt.datetime, interval: str, metric: str
    ) -> list[gpu_pb2.GpuHistoryPoint]:
        return history[metric]

    monitoring = Monitoring.__new__(Monitoring)
    monitoring._gpu_history = read  # type: ignore[method-assign]
    series = await monitoring._gpu_metrics(T0, T0 + dt.timedelta(hours=1), "1m")
    assert series["metrics"] == [
        {"timestamp": "2026-12-07T20:00:00Z", "gpu_utilization": 78.5, "gpu_memory_used": 12288}
    ]
    assert series["summary"] == {"avg_gpu_utilization": 78.5, "max_gpu_utilization": 78.5}
