"""NVML behind a small protocol: the real backend over pynvml, and a scripted
one for tests and machines without a GPU.

Every call here blocks (NVML talks to the kernel driver), so the sampler runs
them off the event loop, one caller at a time. A reading NVML does not provide
is None, never 0, so the proto's optional fields stay absent.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pynvml

from switchboard_common.logs import log_fields

log = logging.getLogger(__name__)
T = TypeVar("T")

_MIB = 1024 * 1024
_UINT32_MAX = 2**32 - 1

# Errors that mean "this GPU or driver does not offer the reading", not "the
# GPU is in trouble": the reading is left absent and the device stays healthy.
# NO_PERMISSION is here because containers often may not see other processes.
_NOT_OFFERED = frozenset(
    {
        pynvml.NVML_ERROR_NOT_SUPPORTED,
        pynvml.NVML_ERROR_NO_PERMISSION,
        pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
    }
)


class NvmlFailure(Exception):
    """NVML as a whole cannot be used (library missing, init failed, driver gone).
    The message is NVML's own text, shown to operators as the reason."""


@dataclass(frozen=True)
class ProcessReading:
    pid: int
    name: str = ""
    used_memory_mib: int | None = None


@dataclass(frozen=True)
class DeviceReading:
    index: int
    uuid: str = ""
    name: str = ""
    utilization_gpu_percent: float | None = None
    utilization_memory_percent: float | None = None
    memory_used_mib: int | None = None
    memory_total_mib: int | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    sm_clock_mhz: int | None = None
    memory_clock_mhz: int | None = None
    ecc_uncorrected_errors: int | None = None
    # The latest XID error while it is recent (a backend reports it for a
    # while after the NVML event, then None again); see gpu_health.FATAL_XIDS.
    last_xid: int | None = None
    # None: the process list was not read this time (it is read every Nth sample).
    processes: tuple[ProcessReading, ...] | None = None
    # Readings NVML refused with a real error ("GPU is lost", "Unknown Error"):
    # the device cannot be trusted, whatever the other readings say.
    failures: tuple[str, ...] = ()


class NvmlBackend(Protocol):
    """What the sampler needs from NVML. `init` and `device_count` raise
    NvmlFailure; per-device trouble is reported inside the DeviceReading."""

    def init(self) -> None: ...

    def shutdown(self) -> None: ...

    def device_count(self) -> int: ...

    def driver_version(self) -> str | None: ...

    def cuda_version(self) -> str | None: ...

    def read_device(self, index: int, *, processes: bool) -> DeviceReading: ...


class _Readings:
    """Calls NVML getters, turning errors into absent readings and noting the real ones."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def get(self, what: str, read: Callable[[], T]) -> T | None:
        try:
            return read()
        except pynvml.NVMLError as exc:
            if exc.value not in _NOT_OFFERED:
                self.failures.append(f"{what}: {exc}")
            return None


def _mib(n_bytes: int) -> int:
    return min(n_bytes // _MIB, _UINT32_MAX)


def _cuda_version(raw: int) -> str:
    # NVML encodes CUDA 12.4 as 12040.
    return f"{raw // 1000}.{raw % 1000 // 10}"


class PynvmlBackend:
    """The real NVML, through nvidia-ml-py."""

    def init(self) -> None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlFailure(str(exc)) from exc

    def shutdown(self) -> None:
        # Never initialised, or already gone: nothing to release either way.
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()

    def device_count(self) -> int:
        try:
            return int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as exc:
            raise NvmlFailure(str(exc)) from exc

    def driver_version(self) -> str | None:
        return _Readings().get("driver", lambda: str(pynvml.nvmlSystemGetDriverVersion()))

    def cuda_version(self) -> str | None:
        raw = _Readings().get("cuda", pynvml.nvmlSystemGetCudaDriverVersion_v2)
        return None if raw is None else _cuda_version(int(raw))

    def read_device(self, index: int, *, processes: bool) -> DeviceReading:
        r = _Readings()
        handle = r.get("handle", lambda: pynvml.nvmlDeviceGetHandleByIndex(index))
        if handle is None:
            # Without a handle nothing can be read, whatever the error was.
            return DeviceReading(index=index, failures=(*r.failures, "handle: not available"))
        util = r.get("utilization", lambda: pynvml.nvmlDeviceGetUtilizationRates(handle))
        memory = r.get("memory", lambda: pynvml.nvmlDeviceGetMemoryInfo(handle))
        temperature = r.get(
            "temperature",
            lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
        )
        power_mw = r.get("power", lambda: pynvml.nvmlDeviceGetPowerUsage(handle))
        limit_mw = r.get("power limit", lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle))
        sm_clock = r.get(
            "sm clock", lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)
        )
        mem_clock = r.get(
            "memory clock", lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM)
        )
        # Volatile (since the driver loaded), not aggregate: an old error in the
        # InfoROM must not mark a GPU unhealthy for the rest of its life.
        ecc = r.get(
            "ecc",
            lambda: pynvml.nvmlDeviceGetTotalEccErrors(
                handle, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC
            ),
        )
        return DeviceReading(
            index=index,
            uuid=str(r.get("uuid", lambda: pynvml.nvmlDeviceGetUUID(handle)) or ""),
            name=str(r.get("name", lambda: pynvml.nvmlDeviceGetName(handle)) or ""),
            utilization_gpu_percent=None if util is None else float(util.gpu),
            utilization_memory_percent=None if util is None else float(util.memory),
            memory_used_mib=None if memory is None else _mib(memory.used),
            memory_total_mib=None if memory is None else _mib(memory.total),
            temperature_c=None if temperature is None else float(temperature),
            power_w=None if power_mw is None else power_mw / 1000,
            power_limit_w=None if limit_mw is None else limit_mw / 1000,
            sm_clock_mhz=sm_clock,
            memory_clock_mhz=mem_clock,
            ecc_uncorrected_errors=None if ecc is None else min(int(ecc), _UINT32_MAX),
            # XIDs arrive as NVML events, not as a reading; they come with alerts.
            last_xid=None,
            processes=self._processes(handle, r) if processes else None,
            failures=tuple(r.failures),
        )

    def _processes(self, handle: Any, r: _Readings) -> tuple[ProcessReading, ...]:
        found: dict[int, ProcessReading] = {}
        lists = (
            ("compute processes", pynvml.nvmlDeviceGetComputeRunningProcesses),
            ("graphics processes", pynvml.nvmlDeviceGetGraphicsRunningProcesses),
        )
        for what, list_processes in lists:
            for proc in r.get(what, functools.partial(list_processes, handle)) or ():
                pid = int(proc.pid)
                if pid in found:
                    continue
                used = proc.usedGpuMemory  # None where the driver cannot tell (WDDM)
                found[pid] = ProcessReading(
                    pid=pid,
                    name=self._process_name(pid),
                    used_memory_mib=None if used is None else _mib(int(used)),
                )
        return tuple(found.values())

    @staticmethod
    def _process_name(pid: int) -> str:
        try:
            return str(pynvml.nvmlSystemGetProcessName(pid))
        except pynvml.NVMLError:
            return ""  # a process in another PID namespace, or one that just exited


class ScriptedNvml:
    """NVML that returns scripted readings: for tests, and to exercise the service
    on a machine without a GPU. `set_devices` changes what the next sample sees."""

    def __init__(
        self,
        devices: Sequence[DeviceReading] = (),
        *,
        driver_version: str | None = "550.54.15",
        cuda_version: str | None = "12.4",
        init_error: str | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._devices = list(devices)
        self._driver_version = driver_version
        self._cuda_version = cuda_version
        self.init_error = init_error
        self.initialised = False
        self.init_calls = 0
        # The `processes` flag of every read_device call, in order.
        self.process_flags: list[bool] = []

    def set_devices(self, devices: Sequence[DeviceReading]) -> None:
        with self._lock:
            self._devices = list(devices)

    def init(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise NvmlFailure(self.init_error)
        self.initialised = True

    def shutdown(self) -> None:
        self.initialised = False

    def device_count(self) -> int:
        self._require_init()
        with self._lock:
            return len(self._devices)

    def driver_version(self) -> str | None:
        return self._driver_version

    def cuda_version(self) -> str | None:
        return self._cuda_version

    def read_device(self, index: int, *, processes: bool) -> DeviceReading:
        self._require_init()
        with self._lock:
            if index >= len(self._devices):
                # The script shrank between count and read, as a GPU falling off the bus would.
                return DeviceReading(index=index, failures=("handle: GPU is lost",))
            reading = self._devices[index]
            self.process_flags.append(processes)
        if not processes:
            return replace(reading, processes=None)
        return replace(reading, processes=reading.processes or ())

    def _require_init(self) -> None:
        if not self.initialised:
            raise NvmlFailure("Uninitialized")


def _reading(raw: dict[str, Any]) -> DeviceReading:
    processes = raw.pop("processes", None)
    failures = raw.pop("failures", ())
    return DeviceReading(
        **raw,
        processes=None if processes is None else tuple(ProcessReading(**p) for p in processes),
        failures=tuple(failures),
    )


class ScriptFileNvml(ScriptedNvml):
    """ScriptedNvml read from a JSON file (SWITCHBOARD_GPU_SCRIPT), re-read
    whenever the file changes: for demos and end-to-end tests of a whole stack
    on a machine without a GPU. The file:

        {"driver_version": "550.54.15", "cuda_version": "12.4", "init_error": null,
         "devices": [{"index": 0, "uuid": "GPU-…", "name": "…",
                      "utilization_gpu_percent": 42, "temperature_c": 61,
                      "processes": [{"pid": 1, "name": "vllm", "used_memory_mib": 70000}]}]}

    Device keys are DeviceReading's fields; a key left out is a reading NVML
    did not give.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._mtime_ns = -1
        self._reload()

    def _reload(self) -> None:
        mtime_ns = self.path.stat().st_mtime_ns
        if mtime_ns == self._mtime_ns:
            return
        script = json.loads(self.path.read_text())
        self._mtime_ns = mtime_ns
        self._driver_version = script.get("driver_version", "550.54.15")
        self._cuda_version = script.get("cuda_version", "12.4")
        self.init_error = script.get("init_error")
        self.set_devices([_reading(dict(d)) for d in script.get("devices", ())])

    def init(self) -> None:
        self._reload()
        super().init()

    def device_count(self) -> int:
        self._reload()
        return super().device_count()


def backend_for(script: Path | None) -> NvmlBackend:
    """A script's readings where one is given (SWITCHBOARD_GPU_SCRIPT: demos,
    tests), else NVML. Shared by the gpu and engine services, so they see the
    same GPUs."""
    if script is not None:
        log.warning("gpu readings come from a script, not NVML", extra=log_fields(path=script))
        return ScriptFileNvml(Path(script))
    return PynvmlBackend()
