"""NVML readings into NodeStatus: absent stays absent, health follows the
readings, and a node without NVML says so with NVML's own reason."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from switchboard.gpu.v1 import gpu_pb2
from switchboard_gpu import probe
from switchboard_gpu.nvml import (
    DeviceReading,
    ProcessReading,
    PynvmlBackend,
    ScriptedNvml,
    ScriptFileNvml,
)
from switchboard_gpu.sampler import (
    SATURATED_UTIL_PERCENT,
    Sampler,
    SamplerConfig,
    device_health,
    parse_labels,
)

FULL = DeviceReading(
    index=0,
    uuid="GPU-aaaa",
    name="NVIDIA H100 80GB HBM3",
    utilization_gpu_percent=42.0,
    utilization_memory_percent=17.0,
    memory_used_mib=1024,
    memory_total_mib=81559,
    temperature_c=35.0,
    power_w=71.5,
    power_limit_w=700.0,
    sm_clock_mhz=1980,
    memory_clock_mhz=2619,
    ecc_uncorrected_errors=0,
    last_xid=13,
    processes=(ProcessReading(pid=4242, name="python", used_memory_mib=512),),
)
# A consumer card: no ECC, no power limit, no memory utilisation, no process memory.
SPARSE = DeviceReading(
    index=1,
    uuid="GPU-bbbb",
    name="NVIDIA GeForce RTX 4090",
    utilization_gpu_percent=0.0,
    memory_used_mib=0,
    memory_total_mib=24564,
    temperature_c=30.0,
    processes=(ProcessReading(pid=7, name="Xorg"),),
)


def _config(**overrides: Any) -> SamplerConfig:
    base = SamplerConfig(hostname="node-1", labels={"zone": "a", "pool": "gpu"})
    return dataclasses.replace(base, **overrides)


def test_scripted_readings_become_node_status() -> None:
    sampler = Sampler(ScriptedNvml([FULL, SPARSE]), _config())

    status = sampler.sample(processes=True)

    assert status.nvml_state == gpu_pb2.NVML_STATE_AVAILABLE
    assert status.reason == ""
    assert status.hostname == "node-1"
    assert dict(status.labels) == {"zone": "a", "pool": "gpu"}
    assert (status.driver_version, status.cuda_version) == ("550.54.15", "12.4")
    assert status.HasField("sample_time")
    full, sparse = status.devices
    assert (full.index, full.uuid, full.name) == (0, "GPU-aaaa", "NVIDIA H100 80GB HBM3")
    assert full.utilization_gpu_percent == 42.0
    assert full.memory_used_mib == 1024
    assert full.power_w == 71.5
    assert full.sm_clock_mhz == 1980
    assert full.HasField("ecc_uncorrected_errors")
    assert full.ecc_uncorrected_errors == 0
    assert full.last_xid == 13
    assert full.health == gpu_pb2.GPU_HEALTH_OK
    assert [(p.pid, p.name, p.used_memory_mib) for p in full.processes] == [(4242, "python", 512)]

    # Readings that are really 0 are present; readings NVML did not give are absent.
    assert sparse.HasField("utilization_gpu_percent")
    assert sparse.HasField("memory_used_mib")
    for absent in (
        "utilization_memory_percent",
        "power_w",
        "power_limit_w",
        "sm_clock_mhz",
        "memory_clock_mhz",
        "ecc_uncorrected_errors",
        "last_xid",
    ):
        assert not sparse.HasField(absent), absent
    assert not sparse.processes[0].HasField("used_memory_mib")
    assert sparse.health == gpu_pb2.GPU_HEALTH_OK


def test_process_list_is_kept_between_process_samples() -> None:
    backend = ScriptedNvml([FULL])
    sampler = Sampler(backend, _config())

    sampler.sample(processes=True)
    backend.set_devices([DeviceReading(index=0, uuid="GPU-aaaa", processes=())])
    between = sampler.sample(processes=False)
    refreshed = sampler.sample(processes=True)

    assert [p.pid for p in between.devices[0].processes] == [4242]
    assert list(refreshed.devices[0].processes) == []
    assert backend.process_flags == [True, False, True]


@pytest.mark.parametrize(
    ("reading", "health"),
    [
        (DeviceReading(index=0, utilization_gpu_percent=94.9), gpu_pb2.GPU_HEALTH_OK),
        (
            DeviceReading(index=0, utilization_gpu_percent=SATURATED_UTIL_PERCENT),
            gpu_pb2.GPU_HEALTH_SATURATED,
        ),
        (DeviceReading(index=0, utilization_gpu_percent=100.0), gpu_pb2.GPU_HEALTH_SATURATED),
        (DeviceReading(index=0), gpu_pb2.GPU_HEALTH_OK),
        (DeviceReading(index=0, ecc_uncorrected_errors=1), gpu_pb2.GPU_HEALTH_UNHEALTHY),
        (
            DeviceReading(index=0, utilization_gpu_percent=99.0, ecc_uncorrected_errors=3),
            gpu_pb2.GPU_HEALTH_UNHEALTHY,
        ),
        (
            DeviceReading(index=0, failures=("temperature: GPU is lost",)),
            gpu_pb2.GPU_HEALTH_UNHEALTHY,
        ),
    ],
)
def test_device_health(reading: DeviceReading, health: gpu_pb2.GpuHealth.ValueType) -> None:
    assert device_health(reading) == health


def test_device_that_vanishes_mid_sample_is_unhealthy() -> None:
    class Shrinking(ScriptedNvml):
        def device_count(self) -> int:
            count = super().device_count()
            self.set_devices([FULL])
            return count

    status = Sampler(Shrinking([FULL, SPARSE]), _config()).sample(processes=False)

    assert [d.health for d in status.devices] == [
        gpu_pb2.GPU_HEALTH_OK,
        gpu_pb2.GPU_HEALTH_UNHEALTHY,
    ]


def test_init_failure_is_unavailable_with_nvml_reason() -> None:
    backend = ScriptedNvml([FULL], init_error="NVML Shared Library Not Found")
    sampler = Sampler(backend, _config(init_retry_s=3600.0))

    first = sampler.sample(processes=True)
    second = sampler.sample(processes=True)

    for status in (first, second):
        assert status.nvml_state == gpu_pb2.NVML_STATE_UNAVAILABLE
        assert status.reason == "NVML Shared Library Not Found"
        assert list(status.devices) == []
        assert status.driver_version == ""
        assert status.hostname == "node-1"
    assert backend.init_calls == 1  # the retry waits init_retry_s


def test_init_is_retried_after_the_wait() -> None:
    backend = ScriptedNvml([FULL], init_error="Driver Not Loaded")
    sampler = Sampler(backend, _config(init_retry_s=0.0))

    assert sampler.sample(processes=False).nvml_state == gpu_pb2.NVML_STATE_UNAVAILABLE
    backend.init_error = None
    assert sampler.sample(processes=False).nvml_state == gpu_pb2.NVML_STATE_AVAILABLE
    sampler.close()
    assert not backend.initialised


def test_no_devices() -> None:
    status = Sampler(ScriptedNvml([]), _config()).sample(processes=True)

    assert status.nvml_state == gpu_pb2.NVML_STATE_NO_DEVICES
    assert status.reason == ""
    assert status.driver_version == "550.54.15"


def test_real_nvml_on_this_machine_reports_honestly() -> None:
    sampler = Sampler(PynvmlBackend(), _config())
    try:
        status = sampler.sample(processes=True)
    finally:
        sampler.close()

    if status.nvml_state == gpu_pb2.NVML_STATE_UNAVAILABLE:
        assert status.reason.strip()
        assert list(status.devices) == []
    else:
        # A machine with a GPU: readings came back and the failures are not silent.
        assert status.nvml_state == gpu_pb2.NVML_STATE_AVAILABLE
        assert status.driver_version
        assert all(d.uuid for d in status.devices)


def test_probe_exit_status_matches_nvml(capsys: pytest.CaptureFixture[str]) -> None:
    code = probe.main()

    out = capsys.readouterr().out
    assert code in (0, 2)
    if code == 2:
        assert "NVML_STATE_UNAVAILABLE" in out
        assert "reason: " in out
    else:
        assert "GPU 0:" in out


def test_probe_renders_absent_readings_as_na() -> None:
    status = Sampler(ScriptedNvml([SPARSE]), _config()).sample(processes=True)

    text = probe.render(status)

    assert "GPU 1: NVIDIA GeForce RTX 4090 GPU-bbbb [OK]" in text
    assert "power        n/a / limit n/a" in text
    assert "process 7 Xorg n/a" in text


def test_parse_labels() -> None:
    assert parse_labels("") == {}
    assert parse_labels(" zone = a ,pool=gpu,, ") == {"zone": "a", "pool": "gpu"}
    with pytest.raises(ValueError, match="SWITCHBOARD_NODE_LABELS"):
        parse_labels("zone")


def test_config_from_env() -> None:
    config = SamplerConfig.from_env(
        {
            "SWITCHBOARD_GPU_INTERVAL_S": "0.25",
            "SWITCHBOARD_GPU_PROCESS_EVERY": "10",
            "SWITCHBOARD_NODE_LABELS": "rack=r1",
        }
    )
    assert (config.interval_s, config.process_every) == (0.25, 10)
    assert dict(config.labels) == {"rack": "r1"}
    assert config.hostname == socket.gethostname()
    assert SamplerConfig.from_env({"SWITCHBOARD_NODE_NAME": "gpu-node-7"}).hostname == "gpu-node-7"
    assert SamplerConfig.from_env({}).interval_s == 1.0
    with pytest.raises(ValueError, match="SWITCHBOARD_GPU_INTERVAL_S"):
        SamplerConfig.from_env({"SWITCHBOARD_GPU_INTERVAL_S": "0"})
    with pytest.raises(ValueError, match="SWITCHBOARD_GPU_PROCESS_EVERY"):
        SamplerConfig.from_env({"SWITCHBOARD_GPU_PROCESS_EVERY": "2.5"})


@pytest.mark.asyncio
async def test_slow_watcher_drops_oldest_updates() -> None:
    sampler = Sampler(ScriptedNvml([FULL]), _config(watcher_queue=3))
    statuses = [sampler.sample(processes=False) for _ in range(5)]

    with sampler.watch() as updates:
        for status in statuses:
            sampler.publish(status)
        received = [updates.get_nowait().metrics_update for _ in range(updates.qsize())]

    assert received == statuses[2:]
    assert sampler.latest is statuses[-1]


@pytest.mark.asyncio
async def test_sampler_reads_processes_every_nth_sample() -> None:
    backend = ScriptedNvml([FULL])
    sampler = Sampler(backend, _config(interval_s=0.01, process_every=3))
    with sampler.watch() as updates:
        await sampler.start()
        try:
            for _ in range(5):
                await asyncio.wait_for(updates.get(), timeout=5)
        finally:
            await sampler.stop()

    # The first sample (taken by start) and every third after it read processes.
    assert backend.process_flags[:5] == [True, False, False, True, False]


def _gauge(name: str, host: str, device: str = "GPU-aaaa") -> float | None:
    labels = {"gpu": "0", "UUID": device, "modelName": FULL.name, "Hostname": host}
    return REGISTRY.get_sample_value(name, labels)


def test_prometheus_gauges_follow_present_readings() -> None:
    backend = ScriptedNvml([FULL])
    sampler = Sampler(backend, _config(hostname="metrics-node"))

    sampler.publish(sampler.sample(processes=False))
    assert _gauge("DCGM_FI_DEV_GPU_UTIL", "metrics-node") == 42.0
    assert _gauge("DCGM_FI_DEV_FB_USED", "metrics-node") == 1024
    assert _gauge("DCGM_FI_DEV_FB_FREE", "metrics-node") == 81559 - 1024
    assert _gauge("DCGM_FI_DEV_POWER_USAGE", "metrics-node") == 71.5
    assert REGISTRY.get_sample_value("switchboard_gpu_nvml_up") == 1

    # The reading goes away: so does its series, rather than sticking or reading 0.
    backend.set_devices([DeviceReading(index=0, uuid="GPU-aaaa", name=FULL.name)])
    sampler.publish(sampler.sample(processes=False))
    assert _gauge("DCGM_FI_DEV_GPU_UTIL", "metrics-node") is None
    assert _gauge("DCGM_FI_DEV_FB_FREE", "metrics-node") is None

    down = Sampler(ScriptedNvml(init_error="Driver Not Loaded"), _config(hostname="metrics-node"))
    down.publish(down.sample(processes=False))
    assert REGISTRY.get_sample_value("switchboard_gpu_nvml_up") == 0


def test_nvml_errors_are_reported_with_the_health_reason() -> None:
    lost = DeviceReading(index=0, uuid="GPU-aaaa", failures=("temperature: GPU is lost",))

    status = Sampler(ScriptedNvml([lost]), _config()).sample(processes=False)

    (device,) = status.devices
    assert list(device.nvml_errors) == ["temperature: GPU is lost"]
    assert device.health == gpu_pb2.GPU_HEALTH_UNHEALTHY
    assert device.health_reason == "NVML error: temperature: GPU is lost"


def test_saturation_threshold_is_configurable() -> None:
    busy = dataclasses.replace(FULL, utilization_gpu_percent=85.0)

    default = Sampler(ScriptedNvml([busy]), _config()).sample(processes=False)
    lower = Sampler(ScriptedNvml([busy]), _config(saturated_percent=80.0)).sample(processes=False)

    assert default.devices[0].health == gpu_pb2.GPU_HEALTH_OK
    assert lower.devices[0].health == gpu_pb2.GPU_HEALTH_SATURATED
    assert lower.devices[0].health_reason == "utilization_gpu_percent 85 >= 80"
    assert (
        SamplerConfig.from_env({"SWITCHBOARD_GPU_SATURATED_PERCENT": "80"}).saturated_percent == 80
    )


def test_sample_time_comes_from_the_clock() -> None:
    sampler = Sampler(ScriptedNvml([FULL]), _config(), clock=lambda: 1_735_689_600.25)

    status = sampler.sample(processes=False)

    assert status.sample_time.ToNanoseconds() == 1_735_689_600_250_000_000


@pytest.mark.asyncio
async def test_slow_watcher_keeps_every_alert() -> None:
    sampler = Sampler(ScriptedNvml([FULL]), _config(watcher_queue=2))
    statuses = [sampler.sample(processes=False) for _ in range(4)]
    alerts = [gpu_pb2.GpuAlert(alert_id=f"a{n}") for n in range(4)]

    with sampler.watch() as updates:
        for status, alert in zip(statuses, alerts, strict=True):
            sampler.publish(status, [alert])
        received = [updates.get_nowait() for _ in range(updates.qsize())]

    assert [r.alert.alert_id for r in received if r.HasField("alert")] == ["a0", "a1", "a2", "a3"]
    assert [r.metrics_update for r in received if r.HasField("metrics_update")] == statuses[2:]


@pytest.mark.asyncio
async def test_ticks_decide_when_samples_are_taken() -> None:
    ticks: asyncio.Queue[None] = asyncio.Queue()
    backend = ScriptedNvml([FULL])
    sampler = Sampler(backend, _config(interval_s=0.001), tick=ticks.get)
    with sampler.watch() as updates:
        await sampler.start()
        try:
            await asyncio.wait_for(updates.get(), timeout=5)  # the one start() takes
            ticks.put_nowait(None)
            await asyncio.wait_for(updates.get(), timeout=5)
            # Each tick is one sample: no tick, no sample, however short the interval.
            assert updates.qsize() == 0
            assert len(backend.process_flags) == 2
        finally:
            await sampler.stop()


def test_script_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "gpu.json"
    path.write_text(
        json.dumps(
            {
                "driver_version": "560.1",
                "devices": [
                    {
                        "index": 0,
                        "uuid": "GPU-file",
                        "utilization_gpu_percent": 5,
                        "processes": [{"pid": 9, "name": "vllm", "used_memory_mib": 100}],
                    }
                ],
            }
        )
    )
    backend = ScriptFileNvml(path)
    sampler = Sampler(backend, _config())

    first = sampler.sample(processes=True)
    path.write_text(json.dumps({"devices": [{"index": 0, "uuid": "GPU-file", "failures": ["x"]}]}))
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1_000_000))
    second = sampler.sample(processes=True)

    assert first.driver_version == "560.1"
    (device,) = first.devices
    assert (device.uuid, device.utilization_gpu_percent) == ("GPU-file", 5.0)
    assert [(p.pid, p.name, p.used_memory_mib) for p in device.processes] == [(9, "vllm", 100)]
    assert not second.devices[0].HasField("utilization_gpu_percent")
    assert second.devices[0].health == gpu_pb2.GPU_HEALTH_UNHEALTHY
