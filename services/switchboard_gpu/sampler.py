"""Samples NVML at a fixed interval into a NodeStatus, keeps the latest, and fans
each new one out to watchers, with the alert transitions it caused.

Published statuses are shared between GetGpuStatus and every watcher: treat
them as read-only once published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from switchboard.gpu.v1 import gpu_pb2
from switchboard_common import env as values
from switchboard_common import gpu_health
from switchboard_common.env import SettingsError
from switchboard_common.gpu_metrics import GPU_METRIC_FIELDS
from switchboard_common.logs import log_fields
from switchboard_gpu import host, metrics
from switchboard_gpu.alerts import to_timestamp
from switchboard_gpu.nvml import DeviceReading, NvmlBackend, NvmlFailure, ProcessReading

log = logging.getLogger(__name__)

# At or above this GPU utilisation a device reports SATURATED, so routing
# prefers other deployments while it stays that busy.
SATURATED_UTIL_PERCENT = gpu_health.DEFAULT_SATURATED_PERCENT

Clock = Callable[[], float]
# Runs on each sample before it is published: may update the devices' health
# and returns the alert transitions the sample caused.
Process = Callable[[gpu_pb2.NodeStatus], Awaitable[Sequence[gpu_pb2.GpuAlert]]]


def parse_labels(raw: str) -> dict[str, str]:
    """`k=v,k2=v2` (SWITCHBOARD_NODE_LABELS) into a dict; blanks are ignored."""
    labels: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(
                f"SWITCHBOARD_NODE_LABELS: expected key=value, got {item.strip()!r}"
            )
        labels[key.strip()] = value.strip()
    return labels


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
    # At or above this utilisation a device is SATURATED (SWITCHBOARD_GPU_SATURATED_PERCENT).
    saturated_percent: float = SATURATED_UTIL_PERCENT
    # SWITCHBOARD_HOME: its filesystem's usage is reported beside each sample.
    home: Path = Path(".switchboard")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SamplerConfig:
        """The sampler's part of GpuSettings (settings.py), which sets `home`."""
        return cls(
            interval_s=values.number(env, "SWITCHBOARD_GPU_INTERVAL_S", 1.0, above=0),
            process_every=values.integer(env, "SWITCHBOARD_GPU_PROCESS_EVERY", 5, above=0),
            # In k8s the pod's hostname is not the node's, and deployments'
            # gpu_node names the node: the DaemonSet passes spec.nodeName here.
            hostname=env.get("SWITCHBOARD_NODE_NAME") or socket.gethostname(),
            labels=parse_labels(env.get("SWITCHBOARD_NODE_LABELS", "")),
            saturated_percent=values.number(
                env,
                "SWITCHBOARD_GPU_SATURATED_PERCENT",
                SATURATED_UTIL_PERCENT,
                above=0,
                maximum=100,
            ),
        )


def device_health(
    reading: DeviceReading, saturated_percent: float = SATURATED_UTIL_PERCENT
) -> gpu_pb2.GpuHealth.ValueType:
    return to_device(reading, (), saturated_percent).health


def annotate(
    device: gpu_pb2.GpuDevice,
    alerts: Sequence[gpu_pb2.GpuAlert],
    saturated_percent: float = SATURATED_UTIL_PERCENT,
) -> None:
    """Set health and its reason from the readings and the alerts firing on it."""
    verdict = gpu_health.classify_device(device, alerts, saturated_percent=saturated_percent)
    device.health = verdict.health
    device.health_reason = verdict.reason


_OPTIONAL_FIELDS = GPU_METRIC_FIELDS


def to_device(
    reading: DeviceReading,
    processes: tuple[ProcessReading, ...],
    saturated_percent: float = SATURATED_UTIL_PERCENT,
) -> gpu_pb2.GpuDevice:
    device = gpu_pb2.GpuDevice(
        index=reading.index,
        uuid=reading.uuid,
        name=reading.name,
        nvml_errors=reading.failures,
    )
    for name in _OPTIONAL_FIELDS:
        value = getattr(reading, name)
        if value is not None:  # absent stays absent: never write a 0 for "unknown"
            setattr(device, name, value)
    for proc in processes:
        process = device.processes.add(pid=proc.pid, name=proc.name)
        if proc.used_memory_mib is not None:
            process.used_memory_mib = proc.used_memory_mib
    annotate(device, (), saturated_percent)
    return device


class Watcher:
    """One watcher's backlog. Metric updates are bounded, dropping the oldest
    for a watcher that falls behind; alerts are never dropped (they are rare,
    and a missed transition would leave the watcher wrong until the next one)."""

    def __init__(self, max_updates: int) -> None:
        self._items: deque[gpu_pb2.WatchGpuMetricsResponse] = deque()
        self._updates = 0
        self._max_updates = max_updates
        self._ready = asyncio.Event()

    def put(self, item: gpu_pb2.WatchGpuMetricsResponse) -> None:
        if item.HasField("metrics_update"):
            if self._updates >= self._max_updates:
                for i, queued in enumerate(self._items):
                    if queued.HasField("metrics_update"):
                        del self._items[i]
                        break
            else:
                self._updates += 1
        self._items.append(item)
        self._ready.set()

    def get_nowait(self) -> gpu_pb2.WatchGpuMetricsResponse:
        item = self._items.popleft()  # IndexError when empty, like an empty deque
        if item.HasField("metrics_update"):
            self._updates -= 1
        if not self._items:
            self._ready.clear()
        return item

    async def get(self) -> gpu_pb2.WatchGpuMetricsResponse:
        while not self._items:
            await self._ready.wait()
        return self.get_nowait()

    def qsize(self) -> int:
        return len(self._items)


class Sampler:
    def __init__(
        self,
        backend: NvmlBackend,
        config: SamplerConfig,
        *,
        clock: Clock = time.time,
        process: Process | None = None,
        tick: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """clock: wall-clock seconds for sample_time (alert durations are
        measured in sample time, so a test clock drives them). process: see
        Process. tick: when given, awaited between samples instead of the
        interval, so a test decides when each sample is taken."""
        self._backend = backend
        self._config = config
        # The interval from the environment, what a cleared registry setting returns to.
        self._started_interval_s = config.interval_s
        self._retuned = asyncio.Event()
        self._clock = clock
        self._disk = host.disk_path(config.home)
        self._process = process
        self._tick = tick
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
        self._watchers: set[Watcher] = set()
        self._task: asyncio.Task[None] | None = None

    @property
    def config(self) -> SamplerConfig:
        return self._config

    def retune(self, interval_s: float | None) -> None:
        """The registry's gpu_monitor_interval, live (None: the started interval);
        a sampler waiting out a long interval starts the new one now."""
        wanted = interval_s or self._started_interval_s
        if wanted != self._config.interval_s:
            self._config = replace(self._config, interval_s=wanted)
            self._retuned.set()

    @property
    def latest(self) -> gpu_pb2.NodeStatus:
        return self._latest

    def _blank(self) -> gpu_pb2.NodeStatus:
        status = gpu_pb2.NodeStatus(hostname=self._config.hostname, labels=self._config.labels)
        status.sample_time.CopyFrom(to_timestamp(self._clock()))
        status.host.CopyFrom(host.read(self._disk))
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
        return to_device(reading, self._processes.get(key, ()), self._config.saturated_percent)

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
        if self._tick is not None:
            while True:
                await self._tick()
                await self._sample_and_publish()
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self._config.interval_s
            delay = next_at - loop.time()
            if delay < 0:
                # A slow sample: skip the missed ticks rather than sample in a burst.
                next_at, delay = loop.time(), 0.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._retuned.wait(), delay)
            if self._retuned.is_set():
                self._retuned.clear()
                next_at = loop.time()
                continue
            await self._sample_and_publish()

    async def _sample_and_publish(self) -> None:
        processes = self._samples % self._config.process_every == 0
        self._samples += 1
        try:
            status = await asyncio.to_thread(self.sample, processes=processes)
            alerts = await self._process(status) if self._process is not None else ()
        except Exception:
            # A bug in one sample must not end sampling for the life of the process.
            log.exception("gpu sample failed")
            return
        self.publish(status, alerts)

    def publish(self, status: gpu_pb2.NodeStatus, alerts: Sequence[gpu_pb2.GpuAlert] = ()) -> None:
        """Make `status` the latest and hand it, then `alerts`, to every watcher."""
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
        update = gpu_pb2.WatchGpuMetricsResponse(metrics_update=status)
        for watcher in self._watchers:
            watcher.put(update)
        self.publish_alerts(alerts)

    def publish_alerts(self, alerts: Sequence[gpu_pb2.GpuAlert]) -> None:
        for alert in alerts:
            event = gpu_pb2.WatchGpuMetricsResponse(alert=alert)
            for watcher in self._watchers:
                watcher.put(event)

    @contextlib.contextmanager
    def watch(self) -> Iterator[Watcher]:
        """A backlog that receives every status and alert published while the block runs."""
        watcher = Watcher(self._config.watcher_queue)
        self._watchers.add(watcher)
        try:
            yield watcher
        finally:
            self._watchers.discard(watcher)
