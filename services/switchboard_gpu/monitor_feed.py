"""Seed 004's monitor feed (GpuService.WatchMonitor): model status changes,
GPU readings and alerts, in the document's shapes.

GPU readings and alerts (over GPU and model metrics) are this service's own
(the sampler's watch); model statuses are this node's engine service's
(EngineFeedService.WatchEngines), followed by one stream per process however
many clients watch (EngineStatuses); after it restarts, the statuses that
differ from those held are sent as changes. The
WebSocket at /ws/monitor (monitor_ws) is this stream, rendered as JSON."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from switchboard.engine.v1 import engine_pb2, engine_pb2_grpc
from switchboard.gpu.v1 import gpu_pb2
from switchboard.registry.v1 import registry_pb2
from switchboard_common.logs import log_fields
from switchboard_gpu.sampler import Sampler

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]

MODEL_STATUS, GPU_METRICS, SYSTEM_ALERTS = "model_status", "gpu_metrics", "system_alerts"
EVENTS = (MODEL_STATUS, GPU_METRICS, SYSTEM_ALERTS)
RECONNECT_S = (0.2, 5.0)
# A watcher this far behind on model statuses is ended (it reconnects).
QUEUE_LIMIT = 1000


def stamp(ts: timestamp_pb2.Timestamp) -> str:
    return ts.ToDatetime(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def model_status(event: engine_pb2.WatchEnginesResponse) -> gpu_pb2.ModelStatusUpdate:
    engine = event.engine
    status = (
        "deleted"
        if event.deleted
        else engine_pb2.EngineState.Name(engine.state).removeprefix("ENGINE_STATE_").lower()
    )
    return gpu_pb2.ModelStatusUpdate(
        model_id=engine.name,
        status=status,
        # As the document's model resources say it (inference_manager_bodies.rendered).
        health={"running": "healthy", "error": "unhealthy"}.get(status, "unknown"),
        timestamp=stamp(engine.state_time),
        reason=engine.state_reason,
        node=engine.node,
    )


def gpu_metrics(status: gpu_pb2.NodeStatus) -> list[gpu_pb2.GpuMetricsUpdate]:
    out = []
    for device in status.devices:
        update = gpu_pb2.GpuMetricsUpdate(
            gpu_id=device.index,
            timestamp=stamp(status.sample_time),
            gpu_uuid=device.uuid,
            hostname=status.hostname,
        )
        # Readings NVML did not give stay absent, never zero.
        if device.HasField("utilization_gpu_percent"):
            update.utilization = device.utilization_gpu_percent
        if device.HasField("memory_used_mib"):
            update.memory_used = device.memory_used_mib
        if device.HasField("temperature_c"):
            update.temperature = device.temperature_c
        out.append(update)
    return out


def system_alert(alert: gpu_pb2.GpuAlert) -> gpu_pb2.SystemAlert:
    out = gpu_pb2.SystemAlert(
        alert_id=alert.alert_id,
        severity=registry_pb2.Severity.Name(alert.severity).removeprefix("SEVERITY_").lower(),
        message=alert.message,
        timestamp=stamp(alert.time),
        state="resolved" if alert.state == gpu_pb2.ALERT_STATE_RESOLVED else "firing",
        rule=alert.rule_name,
        metric=alert.metric,
        value=alert.value,
        threshold=alert.threshold,
        model=alert.model,
        hostname=alert.hostname,
    )
    if not alert.model:
        out.gpu_id = alert.gpu_index
    return out


def _response(data: Any) -> gpu_pb2.WatchMonitorResponse:
    if isinstance(data, gpu_pb2.ModelStatusUpdate):
        return gpu_pb2.WatchMonitorResponse(type="model_status_update", model_status_update=data)
    if isinstance(data, gpu_pb2.GpuMetricsUpdate):
        return gpu_pb2.WatchMonitorResponse(type="gpu_metrics_update", gpu_metrics_update=data)
    return gpu_pb2.WatchMonitorResponse(type="system_alert", system_alert=data)


class EngineStatuses:
    """This node's engines' statuses, followed from the engine service."""

    def __init__(self, stub: engine_pb2_grpc.EngineFeedServiceAsyncStub) -> None:
        self._stub = stub
        self.current: dict[str, gpu_pb2.ModelStatusUpdate] = {}
        self._watchers: set[asyncio.Queue[gpu_pb2.ModelStatusUpdate | None]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="engine-statuses")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for queue in self._watchers:
            queue.put_nowait(None)

    @contextlib.contextmanager
    def watch(self) -> Iterator[asyncio.Queue[gpu_pb2.ModelStatusUpdate | None]]:
        queue: asyncio.Queue[gpu_pb2.ModelStatusUpdate | None] = asyncio.Queue()
        self._watchers.add(queue)
        try:
            yield queue
        finally:
            self._watchers.discard(queue)

    def _publish(self, update: gpu_pb2.ModelStatusUpdate) -> None:
        if update.status == "deleted":
            self.current.pop(update.model_id, None)
        else:
            self.current[update.model_id] = update
        for queue in list(self._watchers):
            if queue.qsize() >= QUEUE_LIMIT:
                self._watchers.discard(queue)
                queue.put_nowait(None)
            else:
                queue.put_nowait(update)

    async def _follow(self) -> None:
        # The engines as they are now come first, then each change: after a
        # reconnect, only what differs from what was held is published.
        # wait_for_ready: connect as soon as the engine service is up (the
        # channel's own reconnect backoff), rather than fail and back off here.
        call = self._stub.WatchEngines(engine_pb2.WatchEnginesRequest(), wait_for_ready=True)
        async for event in call:
            update = model_status(event)
            held = self.current.get(update.model_id)
            if held is None or held.status != update.status or update.status == "deleted":
                self._publish(update)

    async def _run(self) -> None:
        delay = RECONNECT_S[0]
        while True:
            try:
                await self._follow()
                delay = RECONNECT_S[0]
            except grpc.aio.AioRpcError as exc:
                log.debug("engine feed unavailable", extra=log_fields(code=str(exc.code())))
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_S[1])


class MonitorServicer:
    """WatchMonitor, mounted on GpuService's servicer."""

    def __init__(self, sampler: Sampler, engines: EngineStatuses, draining: asyncio.Event) -> None:
        self._sampler = sampler
        self._engines = engines
        self._draining = draining

    async def watch(
        self, events: Sequence[str], active: Sequence[gpu_pb2.GpuAlert]
    ) -> AsyncIterator[gpu_pb2.WatchMonitorResponse]:
        """The current statuses, readings and firing alerts, then each change."""
        wanted = set(events or EVENTS)
        with self._sampler.watch() as gpu, self._engines.watch() as models:
            if MODEL_STATUS in wanted:
                for update in list(self._engines.current.values()):
                    yield _response(update)
            if GPU_METRICS in wanted:
                for reading in gpu_metrics(self._sampler.latest):
                    yield _response(reading)
            if SYSTEM_ALERTS in wanted:
                for alert in active:
                    yield _response(system_alert(alert))
            pending_gpu = asyncio.ensure_future(gpu.get())
            pending_model = asyncio.ensure_future(models.get())
            drained = asyncio.ensure_future(self._draining.wait())
            try:
                while True:
                    await asyncio.wait(
                        {pending_gpu, pending_model, drained},
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if drained.done():
                        return
                    if pending_model.done():
                        changed = pending_model.result()
                        if changed is None:
                            return
                        pending_model = asyncio.ensure_future(models.get())
                        if MODEL_STATUS in wanted:
                            yield _response(changed)
                    if pending_gpu.done():
                        event = pending_gpu.result()
                        pending_gpu = asyncio.ensure_future(gpu.get())
                        if event.HasField("metrics_update") and GPU_METRICS in wanted:
                            for reading in gpu_metrics(event.metrics_update):
                                yield _response(reading)
                        elif event.HasField("alert") and SYSTEM_ALERTS in wanted:
                            yield _response(system_alert(event.alert))
            finally:
                for pending in (pending_gpu, pending_model, drained):
                    pending.cancel()
