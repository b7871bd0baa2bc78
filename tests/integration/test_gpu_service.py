"""GpuService through the real server bootstrap and a real gRPC channel."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import socket
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from switchboard.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from switchboard_common.server import serve
from switchboard_common.settings import Settings
from switchboard_gpu.nvml import DeviceReading, NvmlBackend, ScriptedNvml
from switchboard_gpu.sampler import SamplerConfig
from switchboard_gpu.service import setup

pytestmark = pytest.mark.integration

SERVICE = "switchboard.gpu.v1.GpuService"
WAIT_S = 10.0
# The channel may try before the server listens; retry soon rather than after
# gRPC's default 1 s backoff.
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 200),
]
H100 = DeviceReading(
    index=0,
    uuid="GPU-aaaa",
    name="NVIDIA H100 80GB HBM3",
    utilization_gpu_percent=10.0,
    memory_used_mib=2048,
    memory_total_mib=81559,
    temperature_c=40.0,
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def running_gpu(
    monkeypatch: pytest.MonkeyPatch, backend: NvmlBackend | None, interval_s: float = 0.05
) -> AsyncIterator[grpc.aio.Channel]:
    """The gpu service on a free port, and a channel to it; stopped cleanly on exit."""
    monkeypatch.setenv("SWITCHBOARD_GPU_METRICS_PORT", "0")  # 0: no metrics side server
    base = Settings.from_env()
    settings = dataclasses.replace(
        base, host="127.0.0.1", ports={**base.ports, "gpu": _free_port()}
    )
    config = SamplerConfig(interval_s=interval_s, hostname="test-node", labels={"zone": "z1"})
    stop = asyncio.Event()
    server = asyncio.create_task(
        serve("gpu", functools.partial(setup, backend=backend, config=config), settings, stop=stop)
    )
    try:
        address = f"127.0.0.1:{settings.ports['gpu']}"
        async with grpc.aio.insecure_channel(address, options=FAST_RECONNECT) as channel:
            ready = asyncio.ensure_future(channel.channel_ready())
            done, _ = await asyncio.wait(
                {server, ready}, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED
            )
            if server in done:
                ready.cancel()
                server.result()  # serve ended before it was ready: raise why
            assert ready in done, "the gpu server did not become ready"
            yield channel
    finally:
        stop.set()
        await asyncio.wait_for(server, WAIT_S)


@pytest.mark.asyncio
async def test_get_status_reports_scripted_readings(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_gpu(monkeypatch, ScriptedNvml([H100])) as channel:
        reply = await gpu_pb2_grpc.GpuServiceStub(channel).GetGpuStatus(
            gpu_pb2.GetGpuStatusRequest(), timeout=WAIT_S
        )

    status = reply.status
    assert status.nvml_state == gpu_pb2.NVML_STATE_AVAILABLE
    assert (status.hostname, dict(status.labels)) == ("test-node", {"zone": "z1"})
    assert status.driver_version == "550.54.15"
    (device,) = status.devices
    assert (device.uuid, device.name) == ("GPU-aaaa", "NVIDIA H100 80GB HBM3")
    assert device.utilization_gpu_percent == 10.0
    assert device.memory_used_mib == 2048
    assert not device.HasField("power_w")
    assert not device.HasField("ecc_uncorrected_errors")
    assert device.health == gpu_pb2.GPU_HEALTH_OK
    assert list(reply.active_alerts) == []


@pytest.mark.asyncio
async def test_real_nvml_is_reported_honestly(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_gpu(monkeypatch, None) as channel:
        reply = await gpu_pb2_grpc.GpuServiceStub(channel).GetGpuStatus(
            gpu_pb2.GetGpuStatusRequest(), timeout=WAIT_S
        )

    if reply.status.nvml_state == gpu_pb2.NVML_STATE_UNAVAILABLE:
        assert reply.status.reason.strip()
        assert list(reply.status.devices) == []
    else:
        assert reply.status.nvml_state == gpu_pb2.NVML_STATE_AVAILABLE


@pytest.mark.asyncio
async def test_watch_sends_current_status_then_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = ScriptedNvml([H100])
    async with running_gpu(monkeypatch, backend) as channel:
        call = gpu_pb2_grpc.GpuServiceStub(channel).WatchGpuMetrics(
            gpu_pb2.WatchGpuMetricsRequest()
        )
        first = await asyncio.wait_for(call.read(), WAIT_S)
        assert isinstance(first, gpu_pb2.WatchGpuMetricsResponse)
        assert first.WhichOneof("event") == "metrics_update"
        assert first.metrics_update.devices[0].utilization_gpu_percent == 10.0

        backend.set_devices([dataclasses.replace(H100, utilization_gpu_percent=99.0)])

        async def changed() -> gpu_pb2.GpuDevice:
            while True:
                update = await call.read()
                assert isinstance(update, gpu_pb2.WatchGpuMetricsResponse)
                device = update.metrics_update.devices[0]
                if device.utilization_gpu_percent == 99.0:
                    return device

        device = await asyncio.wait_for(changed(), WAIT_S)
        assert device.health == gpu_pb2.GPU_HEALTH_SATURATED
        call.cancel()


@pytest.mark.asyncio
async def test_watch_honours_interval_ms(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_gpu(monkeypatch, ScriptedNvml([H100])) as channel:
        call = gpu_pb2_grpc.GpuServiceStub(channel).WatchGpuMetrics(
            gpu_pb2.WatchGpuMetricsRequest(interval_ms=300)
        )
        times = []
        for _ in range(3):
            update = await asyncio.wait_for(call.read(), WAIT_S)
            assert isinstance(update, gpu_pb2.WatchGpuMetricsResponse)
            times.append(update.metrics_update.sample_time.ToNanoseconds() / 1e9)
        call.cancel()

    # Samples come every 0.05 s; the watcher asked for 0.3 s, less half a
    # sample of slack, so consecutive updates are well over 0.15 s apart.
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap > 0.15 for gap in gaps), gaps


@pytest.mark.asyncio
async def test_health_reports_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_gpu(monkeypatch, ScriptedNvml([H100])) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _error_reason(err: grpc.aio.AioRpcError) -> str:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
    return ""


@pytest.mark.asyncio
async def test_history_and_alerts_are_not_implemented(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_gpu(monkeypatch, ScriptedNvml([H100])) as channel:
        stub = gpu_pb2_grpc.GpuServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as history:
            await stub.QueryGpuHistory(gpu_pb2.QueryGpuHistoryRequest(), timeout=WAIT_S)
        with pytest.raises(grpc.aio.AioRpcError) as alerts:
            await stub.ListGpuAlerts(gpu_pb2.ListGpuAlertsRequest(), timeout=WAIT_S)

    for err in (history.value, alerts.value):
        assert err.code() == grpc.StatusCode.UNIMPLEMENTED
        assert _error_reason(err) == "NOT_IMPLEMENTED"
    assert "ClickHouse" in (history.value.details() or "")
