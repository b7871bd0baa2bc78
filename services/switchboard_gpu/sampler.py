"""Samples NVML at a fixed interval into a NodeStatus, keeps the latest, and fans
each new one out to watchers.

Published statuses are shared between GetGpuStatus and every watcher: treat
them as read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from switchboard.gpu.v1 import gpu_pb2
from switchboard_common.logs import log_fields
from switchboard_gpu import metrics
from switchboard_gpu.nvml import DeviceReading, NvmlBackend, NvmlFailure, ProcessReading

log = logging.getLogger(__name__)

# At or above this GPU utilisation a device reports SATURATED, so routing
# prefers other deployments while it stays that busy.
SATURATED_UTIL_PERCENT = 95.0


def parse_labels(raw: str) -> dict[str, str]:
    """`k=v,k2=v2` (SWITCHBOARD_NODE_LABELS) into a dict; blanks are ignored."""
    labels: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"SWITCHBOARD_NODE_LABELS: expected key=value, got {item.strip()!r}")
        labels[key.strip()] = value.strip()
    return labels


def _env_positive(env: Mapping[str, str], name: str, default: float, kind: type[float]) -> float:
    raw = env.get(name, "")
    try:
        value = kind(raw) if raw else default
    except ValueError as exc:
        raise ValueError(f"{name} must be a {kind.__name__}, got {raw!r}") from exc
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {raw!r}")
    return value


@dataclass(frozen=True)
class SamplerConfig:
    interval_s: float = 1.0
    # Process lists are slow to read (one call per process for its name), so
    # they are read every Nth sample and the last list is reported in between.
    process_every: int = 5
    hostname: str = field(default_factory=socket.gethostname)
    labels: Mapping[str, str] = field(default_factory=dict)
    # How long to wait before trying NVML init again after it failed.
    init_retry_s: float = 30.0
    # Updates a watcher may fall behind by before its oldest are dropped.
    watcher_queue: int = 8

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SamplerConfig:
        env = os.environ if env is None else env
        return cls(
            interval_s=_env_positive(env, "SWITCHBOARD_GPU_INTERVAL_S", 1.0, float),
            process_every=int(_env_positive(env, "SWITCHBOARD_GPU_PROCESS_EVERY", 5, int)),
            labels=parse_labels(env.get("SWITCHBOARD_NODE_LABELS", "")),
        )


def device_health(reading: DeviceReading) -> gpu_pb2.GpuHealth.ValueType:
    if reading.failures or (reading.ecc_uncorrected_errors or 0) > 0:
        return gpu_pb2.GPU_HEALTH_UNHEALTHY
    util = reading.utilization_gpu_percent
    if util is not None and util >= SATURATED_UTIL_PERCENT:
        return gpu_pb2.GPU_HEALTH_SATURATED
    return gpu_pb2.GPU_HEALTH_OK


_OPTIONAL_FIELDS = (
    "utilization_gpu_percent",
    "utilization_memory_percent",
    "memory_used_mib",
    "memory_total_mib",
    "temperature_c",
    "power_w",
    "power_limit_w",
    "sm_clock_mhz",
    "memory_clock_mhz",
    "ecc_uncorrected_errors",
    "last_xid",
)


def to_device(reading: DeviceReading, processes: tuple[ProcessReading, ...]) -> gpu_pb2.GpuDevice:
    device = gpu_pb2.GpuDevice(
        index=reading.index,
        uuid=reading.uuid,
        name=reading.name,
        health=device_health(reading),
    )
    for name in _OPTIONAL_FIELDS:
        value = getattr(reading, name)
        if value is not None:  # absent stays absent: never write a 0 for "unknown"
            setattr(device, name, value)
    for proc in processes:
        process = device.processes.add(pid=proc.pid, name=proc.name)
        if proc.used_memory_mib is not None:
            process.used_memory_mib = proc.used_memory_mib
    return device


class Sampler:
    def __init__(self, backend: NvmlBackend, config: SamplerConfig) -> None:
        self._backend = backend
        self._config = config
        # One NVML user at a time: a sample whose task was cancelled keeps
        # running in its thread and must not race the shutdown.
        self._lock = threading.Lock()
        self._initialised = False
        self._failure = ""
        self._retry_init_at = 0.0
        self._versions = ("", "")
        self._processes: dict[str, tuple[ProcessReading, ...]] = {}
        self._samples = 0
        self._latest = self._blank()
        self._watchers: set[asyncio.Queue[gpu_pb2.NodeStatus]] = set()
        self._task: asyncio.Task[None] | None = None

    @property
    def config(self) -> SamplerConfig:
        return self._config

    @property
    def latest(self) -> gpu_pb2.NodeStatus:
        return self._latest

    def _blank(self) -> gpu_pb2.NodeStatus:
        status = gpu_pb2.NodeStatus(hostname=self._config.hostname, labels=self._config.labels)
        status.sample_time.GetCurrentTime()
        return status

    # Blocking side: runs in a worker thread (or directly, in the probe).

    def sample(self, *, processes: bool) -> gpu_pb2.NodeStatus:
        """Read NVML once; NVML is initialised on first use and again after a failure."""
        with self._lock:
            status = self._blank()
            try:
                self._ensure_init()
                count = self._backend.device_count()
                readings = [self._backend.read_device(i, processes=processes) for i in range(count)]
            except NvmlFailure as exc:
                if self._initialised:
                    # The driver went away under us: start over, after the retry wait.
                    self._backend.shutdown()
                    self._initialised = False
                    self._failure = str(exc)
                    self._retry_init_at = time.monotonic() + self._config.init_retry_s
                status.nvml_state = gpu_pb2.NVML_STATE_UNAVAILABLE
                status.reason = str(exc)
                return status
            status.driver_version, status.cuda_version = self._versions
            if not readings:
                status.nvml_state = gpu_pb2.NVML_STATE_NO_DEVICES
                return status
            status.nvml_state = gpu_pb2.NVML_STATE_AVAILABLE
            status.devices.extend(self._device(r, processes) for r in readings)
            return status

    def _ensure_init(self) -> None:
        if self._initialised:
            return
        if time.monotonic() < self._retry_init_at:
            raise NvmlFailure(self._failure)
        try:
            self._backend.init()
        except NvmlFailure as exc:
            self._failure = str(exc) or "NVML init failed without a message"
            self._retry_init_at = time.monotonic() + self._config.init_retry_s
            raise NvmlFailure(self._failure) from exc
        self._initialised = True
        self._failure = ""
        self._versions = (
            self._backend.driver_version() or "",
            self._backend.cuda_version() or "",
        )

    def _device(self, reading: DeviceReading, sampled_processes: bool) -> gpu_pb2.GpuDevice:
        key = reading.uuid or f"index:{reading.index}"
        if reading.processes is not None:
            self._processes[key] = reading.processes
        elif sampled_processes:
            self._processes.pop(key, None)
        return to_device(reading, self._processes.get(key, ()))

    def close(self) -> None:
        with self._lock:
            if self._initialised:
                self._backend.shutdown()
                self._initialised = False

    # Async side: runs on the event loop.

    async def start(self) -> None:
        """Take the first sample, so the service never answers with an empty status,
        then keep sampling in the background."""
        await self._sample_and_publish()
        self._task = asyncio.create_task(self._run(), name="gpu-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.to_thread(self.close)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self._config.interval_s
            delay = next_at - loop.time()
            if delay < 0:
                # A slow sample: skip the missed ticks rather than sample in a burst.
                next_at, delay = loop.time(), 0.0
            await asyncio.sleep(delay)
            await self._sample_and_publish()

    async def _sample_and_publish(self) -> None:
        processes = self._samples % self._config.process_every == 0
        self._samples += 1
        try:
            status = await asyncio.to_thread(self.sample, processes=processes)
        except Exception:
            # A bug in one sample must not end sampling for the life of the process.
            log.exception("gpu sample failed")
            return
        self.publish(status)

    def publish(self, status: gpu_pb2.NodeStatus) -> None:
        """Make `status` the latest and hand it to every watcher."""
        if status.nvml_state != self._latest.nvml_state:
            log.info(
                "nvml state",
                extra=log_fields(
                    state=gpu_pb2.NvmlState.Name(status.nvml_state),
                    reason=status.reason,
                    devices=len(status.devices),
                ),
            )
        self._latest = status
        metrics.publish(status)
        for queue in self._watchers:
            if queue.full():
                queue.get_nowait()  # a slow watcher loses its oldest update, never the newest
            queue.put_nowait(status)

    @contextlib.contextmanager
    def watch(self) -> Iterator[asyncio.Queue[gpu_pb2.NodeStatus]]:
        """A queue that receives every status published while the block runs."""
        queue: asyncio.Queue[gpu_pb2.NodeStatus] = asyncio.Queue(self._config.watcher_queue)
        self._watchers.add(queue)
        try:
            yield queue
        finally:
            self._watchers.discard(queue)
