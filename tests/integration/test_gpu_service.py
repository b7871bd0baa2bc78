"""GpuService through the real server bootstrap and real gRPC channels: status
and stream contents from scripted NVML readings, alert rules followed live from
a real registry, alerts firing after their duration and recovering, and alerts
surviving a restart.

Time is a test clock and each sample is taken when the test ticks, so every
expectation about durations is exact and nothing waits on a sleep."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from switchboard.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from switchboard.registry.v1 import registry_pb2, registry_pb2_grpc
from switchboard_common.server import CHANNEL_OPTIONS
from switchboard_common.settings import Settings
from switchboard_gpu.alerts import to_timestamp
from switchboard_gpu.nvml import DeviceReading, NvmlBackend, ScriptedNvml
from switchboard_gpu.sampler import SamplerConfig
from switchboard_gpu.service import setup
from switchboard_stack.harness import free_port
from tests.conftest import eventually
from tests.support.grpc_errors import reason
from tests.support.inprocess import services, serving

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

SERVICE = "switchboard.gpu.v1.GpuService"
WAIT_S = 10.0
# GpuService's methods are ADMIN (gpu.proto): the tests call them as the admin.
ADMIN_KEY = "gpu-test-admin-key"
ADMIN = (("authorization", f"Bearer {ADMIN_KEY}"),)
# 2025-01-01T00:00:00Z: sample times in these tests are this plus whole seconds.
T0 = 1_735_689_600.0
H100 = DeviceReading(
    index=0,
    uuid="GPU-aaaa",
    name="NVIDIA H100 80GB HBM3",
    utilization_gpu_percent=10.0,
    memory_used_mib=2048,
    memory_total_mib=81559,
    temperature_c=40.0,
)


def nanos(at: float) -> int:
    """A clock reading as the sample_time it becomes."""
    return to_timestamp(at).ToNanoseconds()


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Ticker:
    """Lets the sampler take exactly one sample per tick()."""

    def __init__(self) -> None:
        self._ticks: asyncio.Queue[None] = asyncio.Queue()

    async def wait(self) -> None:
        await self._ticks.get()

    def tick(self) -> None:
        self._ticks.put_nowait(None)


@contextlib.asynccontextmanager
async def running_gpu(
    settings: Settings,
    backend: NvmlBackend | None,
    *,
    clock: Callable[[], float] | None = None,
    ticker: Ticker | None = None,
    interval_s: float = 0.05,
    publish: bool = False,
) -> AsyncIterator[grpc.aio.Channel]:
    """The gpu service with `settings`, and a channel to it; drained on exit."""
    config = SamplerConfig(interval_s=interval_s, hostname="test-node", labels={"zone": "z1"})
    options: dict[str, Any] = {"backend": backend, "config": config, "publish": publish}
    if clock is not None:
        options["clock"] = clock
    if ticker is not None:
        options["tick"] = ticker.wait
    gpu_setup = functools.partial(setup, **options)
    async with (
        serving("gpu", gpu_setup, settings) as (settings, _),
        grpc.aio.insecure_channel(settings.address("gpu"), options=CHANNEL_OPTIONS) as channel,
    ):
        yield channel


@contextlib.asynccontextmanager
async def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Settings]:
    """Settings for a gpu service alone: a private home, and a
    registry, usage service and broker addresses where nothing listens."""
    monkeypatch.setenv("SWITCHBOARD_GPU_METRICS_PORT", "0")
    monkeypatch.setenv("SWITCHBOARD_GPU_MONITOR_PORT", "0")
    monkeypatch.setenv("SWITCHBOARD_ENGINE_ADDR", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("SWITCHBOARD_REGISTRY_ADDR", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("SWITCHBOARD_USAGE_ADDR", f"127.0.0.1:{free_port()}")
    base = Settings.from_env()
    yield dataclasses.replace(
        base,
        admin_key=ADMIN_KEY,
        home=tmp_path / "home",
        host="127.0.0.1",
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
    )


class Rules:
    """Alert rules written through the registry's admin RPCs."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._registry = registry_pb2_grpc.RegistryServiceStub(channel)

    async def create(self, rule: registry_pb2.AlertRule) -> None:
        request = registry_pb2.CreateAlertRuleRequest(rule=rule)
        await self._registry.CreateAlertRule(request, metadata=ADMIN, timeout=WAIT_S)

    async def delete(self, name: str) -> None:
        request = registry_pb2.DeleteAlertRuleRequest(name=name)
        await self._registry.DeleteAlertRule(request, metadata=ADMIN, timeout=WAIT_S)


@contextlib.asynccontextmanager
async def with_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Settings, Rules]]:
    """Settings for a gpu service alone (see `isolated`) that follows a real
    registry, and the registry's alert rules."""
    monkeypatch.setenv("SWITCHBOARD_ADMIN_KEY", ADMIN_KEY)
    (tmp_path / "registry").mkdir(parents=True)
    async with (
        services({}, tmp_path / "registry", monkeypatch, names=("registry",)) as registry,
        isolated(tmp_path, monkeypatch) as settings,
        grpc.aio.insecure_channel(registry.address("registry")) as channel,
    ):
        overrides = {**settings.address_overrides, "registry": registry.address("registry")}
        yield dataclasses.replace(settings, address_overrides=overrides), Rules(channel)


def rule(
    name: str,
    metric: str,
    comparator: registry_pb2.Comparator.ValueType,
    threshold: float,
    duration_s: int,
    severity: registry_pb2.Severity.ValueType = registry_pb2.SEVERITY_WARNING,
) -> registry_pb2.AlertRule:
    return registry_pb2.AlertRule(
        name=name,
        metric=metric,
        comparator=comparator,
        threshold=threshold,
        duration=duration_pb2.Duration(seconds=duration_s),
        severity=severity,
    )


HOT = rule("hot", "temperature_c", registry_pb2.COMPARATOR_GREATER_THAN, 80, 60)


async def status(channel: grpc.aio.Channel) -> gpu_pb2.GetGpuStatusResponse:
    reply: gpu_pb2.GetGpuStatusResponse = await gpu_pb2_grpc.GpuServiceStub(channel).GetGpuStatus(
        gpu_pb2.GetGpuStatusRequest(), timeout=WAIT_S, metadata=ADMIN
    )
    return reply


async def rules_applied(channel: grpc.aio.Channel, names: set[str]) -> None:
    """Until the gpu service evaluates exactly the rules `names` (the registry's
    push arrives on its own schedule; this polls a condition with a deadline)."""

    async def applied() -> bool:
        reply = await status(channel)
        return bool(reply.registry_version) and {r.name for r in reply.rules} == names

    await eventually(applied, timeout=WAIT_S, interval=0.02, what=f"rules {sorted(names)}")


class Stream:
    """A WatchGpuMetrics call read one event at a time, with a deadline."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = gpu_pb2_grpc.GpuServiceStub(channel).WatchGpuMetrics(
            gpu_pb2.WatchGpuMetricsRequest(), metadata=ADMIN
        )

    async def next(self) -> gpu_pb2.WatchGpuMetricsResponse:
        event = await asyncio.wait_for(self.call.read(), WAIT_S)
        assert isinstance(event, gpu_pb2.WatchGpuMetricsResponse)
        return event

    async def update(self) -> gpu_pb2.NodeStatus:
        event = await self.next()
        assert event.WhichOneof("event") == "metrics_update", event
        return event.metrics_update

    async def alert(self) -> gpu_pb2.GpuAlert:
        event = await self.next()
        assert event.WhichOneof("event") == "alert", event
        return event.alert


async def sample_at(
    stream: Stream, clock: FakeClock, ticker: Ticker, at: float
) -> gpu_pb2.NodeStatus:
    """Take one sample at clock time `at`; returns it as the stream sent it."""
    clock.now = at
    ticker.tick()
    update = await stream.update()
    assert update.sample_time.ToNanoseconds() == nanos(at)
    return update


async def test_get_status_reports_scripted_readings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        isolated(tmp_path, monkeypatch) as settings,
        running_gpu(settings, ScriptedNvml([H100])) as channel,
    ):
        reply = await status(channel)

    node = reply.status
    assert node.nvml_state == gpu_pb2.NVML_STATE_AVAILABLE
    assert (node.hostname, dict(node.labels)) == ("test-node", {"zone": "z1"})
    assert node.driver_version == "550.54.15"
    (device,) = node.devices
    assert (device.uuid, device.name) == ("GPU-aaaa", "NVIDIA H100 80GB HBM3")
    assert device.utilization_gpu_percent == 10.0
    assert device.memory_used_mib == 2048
    assert not device.HasField("power_w")
    assert not device.HasField("ecc_uncorrected_errors")
    assert device.health == gpu_pb2.GPU_HEALTH_OK
    assert device.health_reason == ""
    assert list(reply.active_alerts) == []
    # No registry answered: no rules, and GPU status is served all the same.
    assert reply.registry_version == 0
    assert list(reply.rules) == []


async def test_real_nvml_is_reported_honestly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SWITCHBOARD_GPU_SCRIPT", raising=False)
    async with isolated(tmp_path, monkeypatch) as settings, running_gpu(settings, None) as channel:
        reply = await status(channel)

    if reply.status.nvml_state == gpu_pb2.NVML_STATE_UNAVAILABLE:
        assert reply.status.reason.strip()
        assert list(reply.status.devices) == []
    else:
        assert reply.status.nvml_state == gpu_pb2.NVML_STATE_AVAILABLE


async def test_watch_sends_current_status_then_each_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = ScriptedNvml([H100])
    clock, ticker = FakeClock(), Ticker()
    async with (
        isolated(tmp_path, monkeypatch) as settings,
        running_gpu(settings, backend, clock=clock, ticker=ticker) as channel,
    ):
        stream = Stream(channel)
        first = await stream.update()
        assert first.sample_time.ToNanoseconds() == nanos(T0)
        assert first.devices[0].utilization_gpu_percent == 10.0

        backend.set_devices([dataclasses.replace(H100, utilization_gpu_percent=99.0)])
        busy = await sample_at(stream, clock, ticker, T0 + 1)
        backend.set_devices(
            [
                dataclasses.replace(
                    H100, ecc_uncorrected_errors=2, failures=("power: Unknown Error",)
                )
            ]
        )
        broken = await sample_at(stream, clock, ticker, T0 + 2)
        stream.call.cancel()

    (device,) = busy.devices
    assert device.health == gpu_pb2.GPU_HEALTH_SATURATED
    assert device.health_reason == "utilization_gpu_percent 99 >= 95"
    (device,) = broken.devices
    assert device.health == gpu_pb2.GPU_HEALTH_UNHEALTHY
    assert list(device.nvml_errors) == ["power: Unknown Error"]
    assert device.health_reason == "NVML error: power: Unknown Error"


async def test_watch_honours_interval_ms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with (
        isolated(tmp_path, monkeypatch) as settings,
        running_gpu(settings, ScriptedNvml([H100])) as channel,
    ):
        call = gpu_pb2_grpc.GpuServiceStub(channel).WatchGpuMetrics(
            gpu_pb2.WatchGpuMetricsRequest(interval_ms=300), metadata=ADMIN
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


async def test_health_reports_serving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with (
        isolated(tmp_path, monkeypatch) as settings,
        running_gpu(settings, ScriptedNvml([H100])) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_history_without_the_usage_service_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        isolated(tmp_path, monkeypatch) as settings,
        running_gpu(settings, ScriptedNvml([H100])) as channel,
    ):
        stub = gpu_pb2_grpc.GpuServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as history:
            await stub.QueryGpuHistory(
                gpu_pb2.QueryGpuHistoryRequest(), timeout=WAIT_S, metadata=ADMIN
            )
        with pytest.raises(grpc.aio.AioRpcError) as alerts:
            await stub.ListGpuAlerts(gpu_pb2.ListGpuAlertsRequest(), timeout=WAIT_S, metadata=ADMIN)

    for err in (history.value, alerts.value):
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert reason(err) == "SERVICE_UNAVAILABLE"
        assert err.details() == "the usage service is unavailable"


async def test_alert_fires_after_its_duration_then_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = ScriptedNvml([H100])
    clock, ticker = FakeClock(), Ticker()
    hot = dataclasses.replace(H100, temperature_c=85.0)
    async with with_registry(tmp_path, monkeypatch) as (settings, registry):
        await registry.create(HOT)
        async with running_gpu(settings, backend, clock=clock, ticker=ticker) as channel:
            await rules_applied(channel, {"hot"})
            stream = Stream(channel)
            await stream.update()  # the status as of T0, at 40 °C

            backend.set_devices([hot])
            await sample_at(stream, clock, ticker, T0 + 10)  # holds from here
            held = await sample_at(stream, clock, ticker, T0 + 69.9)
            assert held.devices[0].health == gpu_pb2.GPU_HEALTH_OK  # not yet: 59.9 s
            fired_status = await sample_at(stream, clock, ticker, T0 + 70)
            fired = await stream.alert()
            during = await status(channel)

            backend.set_devices([H100])
            await sample_at(stream, clock, ticker, T0 + 75)
            resolved = await stream.alert()
            after = await status(channel)
            stream.call.cancel()

    assert fired.state == gpu_pb2.ALERT_STATE_FIRING
    assert (fired.rule_name, fired.metric, fired.hostname) == ("hot", "temperature_c", "test-node")
    assert (fired.gpu_uuid, fired.gpu_index) == ("GPU-aaaa", 0)
    assert fired.severity == registry_pb2.SEVERITY_WARNING
    assert fired.comparator == registry_pb2.COMPARATOR_GREATER_THAN
    assert (fired.value, fired.threshold) == (85.0, 80.0)
    assert fired.time.ToNanoseconds() == nanos(T0 + 70)
    assert fired.start_time == fired.time
    assert fired.message == "temperature_c 85 > 80 for 60s"
    # The sample that fired it already reports the GPU as alerting, and so does status.
    (device,) = fired_status.devices
    assert device.health == gpu_pb2.GPU_HEALTH_ALERTING
    assert device.health_reason == "alert hot (warning): temperature_c 85 > 80 for 60s"
    assert list(during.active_alerts) == [fired]
    assert during.status.devices[0].health == gpu_pb2.GPU_HEALTH_ALERTING

    assert resolved.alert_id == fired.alert_id
    assert resolved.state == gpu_pb2.ALERT_STATE_RESOLVED
    assert resolved.value == 40.0
    assert resolved.time.ToNanoseconds() == nanos(T0 + 75)
    assert resolved.start_time == fired.start_time
    assert resolved.message == "resolved: temperature_c 40 no longer > 80"
    assert list(after.active_alerts) == []
    assert after.status.devices[0].health == gpu_pb2.GPU_HEALTH_OK


async def test_rule_changes_apply_live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deleting a rule resolves its alerts at once; a new rule applies from the
    next sample, and a watcher that joins later is told what is firing."""
    backend = ScriptedNvml([dataclasses.replace(H100, temperature_c=85.0)])
    clock, ticker = FakeClock(), Ticker()
    instant = rule("hot-now", "temperature_c", registry_pb2.COMPARATOR_GREATER_THAN, 80, 0)
    idle = rule(
        "idle",
        "utilization_gpu_percent",
        registry_pb2.COMPARATOR_LESS_THAN,
        20,
        0,
        registry_pb2.SEVERITY_CRITICAL,
    )
    async with with_registry(tmp_path, monkeypatch) as (settings, registry):
        await registry.create(instant)
        async with running_gpu(settings, backend, clock=clock, ticker=ticker) as channel:
            await rules_applied(channel, {"hot-now"})
            stream = Stream(channel)
            await stream.update()
            await sample_at(stream, clock, ticker, T0 + 1)
            fired = await stream.alert()

            late = Stream(channel)
            assert (await late.update()).sample_time.ToNanoseconds() == nanos(T0 + 1)
            assert await late.alert() == fired
            late.call.cancel()

            clock.now = T0 + 2
            await registry.delete("hot-now")
            removed = await stream.alert()  # no sample needed

            await registry.create(idle)
            await rules_applied(channel, {"idle"})
            update = await sample_at(stream, clock, ticker, T0 + 3)
            critical = await stream.alert()
            stream.call.cancel()

    assert fired.rule_name == "hot-now"
    assert fired.message == "temperature_c 85 > 80 for 0s"
    assert removed.alert_id == fired.alert_id
    assert removed.state == gpu_pb2.ALERT_STATE_RESOLVED
    assert removed.message == "resolved: rule removed"
    assert removed.time.ToNanoseconds() == nanos(T0 + 2)
    assert critical.rule_name == "idle"
    assert critical.severity == registry_pb2.SEVERITY_CRITICAL
    # The sample that fired a critical alert already reports the GPU unhealthy.
    assert update.devices[0].health == gpu_pb2.GPU_HEALTH_UNHEALTHY
    assert update.devices[0].health_reason.startswith("alert idle (critical): ")


async def test_firing_alerts_survive_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker is away all along: alert events wait in the local store, and a
    restarted service resolves the alert it fired before, under the same id."""
    backend = ScriptedNvml([dataclasses.replace(H100, temperature_c=85.0)])
    clock, ticker = FakeClock(), Ticker()
    instant = rule("hot-now", "temperature_c", registry_pb2.COMPARATOR_GREATER_THAN, 80, 0)
    async with with_registry(tmp_path, monkeypatch) as (settings, registry):
        await registry.create(instant)
        async with running_gpu(
            settings, backend, clock=clock, ticker=ticker, publish=True
        ) as channel:
            await rules_applied(channel, {"hot-now"})
            stream = Stream(channel)
            await stream.update()
            await sample_at(stream, clock, ticker, T0 + 1)
            fired = await stream.alert()
            stream.call.cancel()

        backend.set_devices([H100])
        clock.now = T0 + 5
        async with running_gpu(
            settings, backend, clock=clock, ticker=ticker, publish=True
        ) as channel:
            # Adopted at start, before the registry's rules arrive: still firing.
            stream = Stream(channel)
            await stream.update()
            assert await stream.alert() == fired
            await rules_applied(channel, {"hot-now"})
            await sample_at(stream, clock, ticker, T0 + 6)
            resolved = await stream.alert()
            stream.call.cancel()

    assert resolved.alert_id == fired.alert_id
    assert resolved.state == gpu_pb2.ALERT_STATE_RESOLVED
    with contextlib.closing(sqlite3.connect(settings.home / "gpu" / "alerts.sqlite")) as db:
        pending = [row[0].decode() for row in db.execute("SELECT key FROM outbox ORDER BY seq")]
        firing = list(db.execute("SELECT alert_id FROM firing"))
    assert pending == [fired.alert_id, fired.alert_id]  # both events, unpublished, kept
    assert firing == []
