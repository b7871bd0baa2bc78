"""Admission (may one more engine start on this node?) and resource readings
for running engines: host memory from /proc, GPU memory through NVML (the gpu
service's backend abstraction, so tests can script it)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from switchboard.registry.v1 import engine_config_pb2 as cfg
from switchboard_common.errors import R, SwitchboardError
from switchboard_gpu.nvml import DeviceReading, NvmlBackend, NvmlFailure

log = logging.getLogger(__name__)


def available_memory_mib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def insufficient(message: str) -> SwitchboardError:
    return SwitchboardError(R.ERROR_REASON_INSUFFICIENT_RESOURCES, message)


@dataclass(frozen=True)
class GpuView:
    """One reading of this node's GPUs (empty when NVML is unavailable)."""

    devices: tuple[DeviceReading, ...]
    # NVML's reason when it could not be read.
    unavailable: str = ""

    def find(self, gpu: str) -> DeviceReading | None:
        """A device by NVML index ("0") or UUID."""
        for device in self.devices:
            if gpu in (str(device.index), device.uuid):
                return device
        return None

    def used_by(self, pid: int) -> list[tuple[str, int]]:
        return [
            (d.uuid, p.used_memory_mib or 0)
            for d in self.devices
            for p in d.processes or ()
            if p.pid == pid
        ]


class GpuProbe:
    def __init__(self, backend: NvmlBackend) -> None:
        self._backend = backend
        self._ready = False
        self._lock = asyncio.Lock()

    def _read(self) -> GpuView:
        try:
            if not self._ready:
                self._backend.init()
                self._ready = True
            count = self._backend.device_count()
            return GpuView(
                tuple(self._backend.read_device(i, processes=True) for i in range(count))
            )
        except NvmlFailure as exc:
            self._ready = False
            return GpuView((), unavailable=str(exc))

    async def read(self) -> GpuView:
        async with self._lock:  # NVML calls are blocking and not reentrant here
            return await asyncio.to_thread(self._read)

    def close(self) -> None:
        if self._ready:
            self._backend.shutdown()
            self._ready = False


def admit(
    config: cfg.EngineConfig,
    *,
    active: int,
    max_models: int,
    node: str,
    gpus: GpuView,
) -> None:
    """Refuse (INSUFFICIENT_RESOURCES) a start that this node cannot take."""
    if active >= max_models:
        raise insufficient(
            f"node {node!r} already runs {active} of its {max_models} models "
            "(SWITCHBOARD_ENGINE_MAX_MODELS); stop one first"
        )
    need_mem = config.resources.memory_mib
    if need_mem:
        free = available_memory_mib()
        if free is not None and free < need_mem:
            raise insufficient(
                f"the engine needs {need_mem} MiB of memory; node {node!r} has {free} MiB available"
            )
    need_gpu = config.resources.gpu_memory_mib
    if not need_gpu:
        return
    if not config.gpus:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST,
            "engine.resources.gpu_memory_mib needs engine.gpus (the GPUs it may use)",
            param="engine.gpus",
        )
    if gpus.unavailable:
        raise insufficient(f"the engine needs a GPU; node {node!r} has none ({gpus.unavailable})")
    for gpu in config.gpus:
        device = gpus.find(gpu)
        if device is None:
            raise insufficient(f"GPU {gpu!r} is not on node {node!r}")
        if device.memory_total_mib is None or device.memory_used_mib is None:
            raise insufficient(f"GPU {gpu!r} on node {node!r}: NVML cannot read its memory")
        free_gpu = device.memory_total_mib - device.memory_used_mib
        if free_gpu < need_gpu:
            raise insufficient(
                f"the engine needs {need_gpu} MiB on GPU {gpu!r}; it has {free_gpu} MiB free"
            )
