"""switchboard_common.gpu_health: what a router concludes about a GPU from its
readings, its alerts, and how recent its node's status is."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from switchboard.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from switchboard.registry.v1 import registry_pb2
from switchboard_common.gpu_health import (
    Condition,
    GpuHealthBoard,
    Verdict,
    classify,
    classify_device,
    follow_gpu_health,
)

HEALTHY = Condition.HEALTHY
SATURATED = Condition.SATURATED
UNHEALTHY = Condition.UNHEALTHY
UNKNOWN = Condition.UNKNOWN


def device(**fields: Any) -> gpu_pb2.GpuDevice:
    return gpu_pb2.GpuDevice(index=0, uuid="GPU-a", **fields)


def alert(
    severity: registry_pb2.Severity.ValueType,
    *,
    alert_id: str = "a1",
    state: gpu_pb2.AlertState.ValueType = gpu_pb2.ALERT_STATE_FIRING,
    gpu_uuid: str = "GPU-a",
    hostname: str = "node-1",
) -> gpu_pb2.GpuAlert:
    return gpu_pb2.GpuAlert(
        alert_id=alert_id,
        rule_name="hot",
        hostname=hostname,
        gpu_uuid=gpu_uuid,
        state=state,
        severity=severity,
        message="temperature_c 85 > 80 for 60s",
    )


def node(*devices: gpu_pb2.GpuDevice, hostname: str = "node-1") -> gpu_pb2.NodeStatus:
    return gpu_pb2.NodeStatus(
        hostname=hostname, nvml_state=gpu_pb2.NVML_STATE_AVAILABLE, devices=devices
    )


@pytest.mark.parametrize(
    ("dev", "alerts", "expected"),
    [
        (device(utilization_gpu_percent=94.9), [], (HEALTHY, "")),
        (device(), [], (HEALTHY, "")),
        (
            device(utilization_gpu_percent=95),
            [],
            (SATURATED, "utilization_gpu_percent 95 >= 95"),
        ),
        (
            device(utilization_gpu_percent=10),
            [alert(registry_pb2.SEVERITY_WARNING)],
            (SATURATED, "alert hot (warning): temperature_c 85 > 80 for 60s"),
        ),
        # Info alerts, resolved alerts and other GPUs' alerts do not count.
        (device(), [alert(registry_pb2.SEVERITY_INFO)], (HEALTHY, "")),
        (
            device(),
            [alert(registry_pb2.SEVERITY_CRITICAL, state=gpu_pb2.ALERT_STATE_RESOLVED)],
            (HEALTHY, ""),
        ),
        (device(), [alert(registry_pb2.SEVERITY_CRITICAL, gpu_uuid="GPU-b")], (HEALTHY, "")),
        (
            device(utilization_gpu_percent=99),
            [alert(registry_pb2.SEVERITY_CRITICAL)],
            (UNHEALTHY, "alert hot (critical): temperature_c 85 > 80 for 60s"),
        ),
        (device(ecc_uncorrected_errors=0), [], (HEALTHY, "")),
        (device(ecc_uncorrected_errors=2), [], (UNHEALTHY, "ecc_uncorrected_errors 2")),
        (device(last_xid=79), [], (UNHEALTHY, "XID 79")),
        # An application's own fault (XID 13) says nothing about the GPU.
        (device(last_xid=13), [], (HEALTHY, "")),
        (
            device(nvml_errors=["temperature: GPU is lost", "power: GPU is lost"]),
            [],
            (UNHEALTHY, "NVML error: temperature: GPU is lost (+1 more)"),
        ),
    ],
)
def test_classify_device(
    dev: gpu_pb2.GpuDevice, alerts: list[gpu_pb2.GpuAlert], expected: tuple[Condition, str]
) -> None:
    verdict = classify_device(dev, alerts)
    assert (verdict.condition, verdict.reason) == expected


def test_health_values_tell_saturation_from_alerting() -> None:
    busy = classify_device(device(utilization_gpu_percent=99))
    alerting = classify_device(device(), [alert(registry_pb2.SEVERITY_WARNING)])
    assert busy.health == gpu_pb2.GPU_HEALTH_SATURATED
    assert alerting.health == gpu_pb2.GPU_HEALTH_ALERTING
    assert classify_device(device()).health == gpu_pb2.GPU_HEALTH_OK


def test_threshold_is_the_callers() -> None:
    dev = device(utilization_gpu_percent=80)
    assert classify_device(dev).condition == HEALTHY
    assert classify_device(dev, saturated_percent=75).reason == "utilization_gpu_percent 80 >= 75"


def test_classify_within_the_node() -> None:
    down = gpu_pb2.NodeStatus(
        hostname="node-1",
        nvml_state=gpu_pb2.NVML_STATE_UNAVAILABLE,
        reason="NVML Shared Library Not Found",
    )

    assert classify(None, "GPU-a") == Verdict(UNKNOWN, "no GPU status from its node yet")
    assert classify(down, "GPU-a") == Verdict(
        UNHEALTHY,
        "NVML unavailable on node-1: NVML Shared Library Not Found",
        gpu_pb2.GPU_HEALTH_UNHEALTHY,
    )
    assert classify(node(device()), "GPU-z").reason == "GPU GPU-z not found on node-1"
    assert classify(node(device()), "GPU-a").condition == HEALTHY


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_board_follows_statuses_and_alerts() -> None:
    clock = Clock()
    board = GpuHealthBoard(stale_after_s=10, clock=clock)

    assert board.verdict("node-1", "GPU-a") == Verdict(UNKNOWN, "no GPU status from node-1 yet")
    board.observe(gpu_pb2.WatchGpuMetricsResponse(metrics_update=node(device())))
    assert board.verdict("node-1", "GPU-a").condition == HEALTHY

    board.observe(gpu_pb2.WatchGpuMetricsResponse(alert=alert(registry_pb2.SEVERITY_CRITICAL)))
    assert board.verdict("node-1", "GPU-a").condition == UNHEALTHY
    # Another node's alert with the same GPU uuid does not touch this one.
    board.observe_alert(alert(registry_pb2.SEVERITY_CRITICAL, alert_id="x", hostname="node-2"))
    resolved = alert(registry_pb2.SEVERITY_CRITICAL, state=gpu_pb2.ALERT_STATE_RESOLVED)
    board.observe(gpu_pb2.WatchGpuMetricsResponse(alert=resolved))
    assert board.verdict("node-1", "GPU-a").condition == HEALTHY

    board.observe_alert(alert(registry_pb2.SEVERITY_WARNING))
    board.forget_alerts("node-1")
    assert board.verdict("node-1", "GPU-a").condition == HEALTHY

    clock.now += 10.5
    stale = board.verdict("node-1", "GPU-a")
    assert stale == Verdict(UNKNOWN, "no GPU status from node-1 for 10s")
    board.observe_status(node(device(utilization_gpu_percent=99)))
    assert board.verdicts() == {
        ("node-1", "GPU-a"): Verdict(
            SATURATED, "utilization_gpu_percent 99 >= 95", gpu_pb2.GPU_HEALTH_SATURATED
        )
    }


class _TwoWatches(gpu_pb2_grpc.GpuFeedServiceServicer):
    """First stream: a status and a firing alert, then it ends (a gpu service
    restarting). Second stream: the status alone (the alert resolved meanwhile)."""

    def __init__(self) -> None:
        self.calls = 0

    async def WatchGpuFeed(
        self, request: gpu_pb2.WatchGpuMetricsRequest, context: Any
    ) -> AsyncIterator[gpu_pb2.WatchGpuMetricsResponse]:
        self.calls += 1
        yield gpu_pb2.WatchGpuMetricsResponse(metrics_update=node(device()))
        if self.calls == 1:
            yield gpu_pb2.WatchGpuMetricsResponse(alert=alert(registry_pb2.SEVERITY_CRITICAL))
            return
        await asyncio.Event().wait()  # held open until the client cancels


class _RecordingBoard(GpuHealthBoard):
    """Notes the verdict on GPU-a after each event it is fed."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Condition] = []
        self.fed = asyncio.Event()

    def observe(self, response: gpu_pb2.WatchGpuMetricsResponse) -> None:
        super().observe(response)
        self.seen.append(self.verdict("node-1", "GPU-a").condition)
        if len(self.seen) == 3:
            self.fed.set()


@pytest.mark.integration
@pytest.mark.asyncio
async def test_follow_gpu_health_reconnects_and_drops_stale_alerts() -> None:
    watch = _TwoWatches()
    server = grpc.aio.server()
    gpu_pb2_grpc.add_GpuFeedServiceServicer_to_server(watch, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    board = _RecordingBoard()
    follower = asyncio.create_task(follow_gpu_health(f"127.0.0.1:{port}", board))
    try:
        await asyncio.wait_for(board.fed.wait(), 10)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await server.stop(None)

    # The alert made it unhealthy; the reconnected stream's first status
    # cleared the alert the first stream could no longer resolve.
    assert board.seen == [HEALTHY, UNHEALTHY, HEALTHY]
    assert watch.calls == 2
