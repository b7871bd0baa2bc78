"""Prometheus gauges named like dcgm-exporter's, so existing GPU dashboards work.

A series exists only while its reading does: when NVML stops giving a reading
(or a GPU disappears) the series is removed rather than left at its last value
or set to 0.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Gauge

from switchboard.gpu.v1 import gpu_pb2

_LABELS = ("gpu", "UUID", "modelName", "Hostname")
Reader = Callable[[gpu_pb2.GpuDevice], float | None]


def _fb_free(d: gpu_pb2.GpuDevice) -> float | None:
    if d.HasField("memory_total_mib") and d.HasField("memory_used_mib"):
        return float(d.memory_total_mib - d.memory_used_mib)
    return None


_GAUGES: tuple[tuple[Gauge, Reader], ...] = (
    (
        Gauge("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", _LABELS),
        lambda d: d.utilization_gpu_percent if d.HasField("utilization_gpu_percent") else None,
    ),
    (
        Gauge("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", _LABELS),
        lambda d: float(d.memory_used_mib) if d.HasField("memory_used_mib") else None,
    ),
    (Gauge("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", _LABELS), _fb_free),
    (
        Gauge("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", _LABELS),
        lambda d: d.temperature_c if d.HasField("temperature_c") else None,
    ),
    (
        Gauge("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", _LABELS),
        lambda d: d.power_w if d.HasField("power_w") else None,
    ),
    (
        Gauge("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", _LABELS),
        lambda d: float(d.sm_clock_mhz) if d.HasField("sm_clock_mhz") else None,
    ),
    (
        Gauge("DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz).", _LABELS),
        lambda d: float(d.memory_clock_mhz) if d.HasField("memory_clock_mhz") else None,
    ),
)
_NVML_UP_STATES = (gpu_pb2.NVML_STATE_AVAILABLE, gpu_pb2.NVML_STATE_NO_DEVICES)
NVML_UP = Gauge("switchboard_gpu_nvml_up", "1 when NVML is initialised on this node, else 0.")


class _Publisher:
    def __init__(self) -> None:
        # Per gauge, the label sets set last time, to remove those now absent.
        self._live: list[set[tuple[str, ...]]] = [set() for _ in _GAUGES]

    def publish(self, status: gpu_pb2.NodeStatus) -> None:
        NVML_UP.set(1 if status.nvml_state in _NVML_UP_STATES else 0)
        for (gauge, read), live in zip(_GAUGES, self._live, strict=True):
            now: set[tuple[str, ...]] = set()
            for device in status.devices:
                value = read(device)
                if value is None:
                    continue
                labels = (str(device.index), device.uuid, device.name, status.hostname)
                gauge.labels(*labels).set(value)
                now.add(labels)
            for gone in live - now:
                gauge.remove(*gone)
            live.clear()
            live.update(now)


publish = _Publisher().publish
