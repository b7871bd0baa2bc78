"""GpuService: this node's NVML status now and as a stream, alert rules from the
registry evaluated on every sample, and GPU history.

Per sample: NVML is read off the event loop (Sampler), the alert rules are
evaluated (AlertEvaluator), alert transitions are written to the local alert
store before anyone hears of them, devices get their health (gpu_health), and
the sample goes to watchers and, without waiting, to the Kafka publisher.

History and stored alerts live in ClickHouse, which (embedded) only the usage
service may open; so QueryGpuHistory and ListGpuAlerts are forwarded to its
GpuHistoryService. They therefore cover every node, whichever node answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from prometheus_client import Counter, Gauge

from switchboard.engine.v1 import engine_pb2_grpc
from switchboard.gpu.v1 import events_pb2, gpu_pb2, gpu_pb2_grpc, history_pb2, history_pb2_grpc
from switchboard.registry.v1 import registry_pb2, registry_pb2_grpc
from switchboard.usage.v1 import usage_pb2
from switchboard_common.channels import channel as service_channel
from switchboard_common.errors import R, SwitchboardError, from_rpc_error
from switchboard_common.ids import uuid7
from switchboard_common.interceptors import REQUEST_ID_KEY
from switchboard_common.logs import log_fields, request_id_var
from switchboard_common.registry_follower import RegistryFollower
from switchboard_common.server import Mounted
from switchboard_common.settings import Settings
from switchboard_common.tls import TlsFiles
from switchboard_gpu.alert_store import AlertStore
from switchboard_gpu.alerts import AlertEvaluator
from switchboard_gpu.model_alerts import ModelAlerts
from switchboard_gpu.monitor_feed import EVENTS, EngineStatuses, MonitorServicer
from switchboard_gpu.monitor_ws import MonitorSocket
from switchboard_gpu.notify import Notifier
from switchboard_gpu.nvml import NvmlBackend, backend_for
from switchboard_gpu.publisher import HistoryPublisher
from switchboard_gpu.sampler import Clock, Sampler, SamplerConfig, annotate
from switchboard_gpu.settings import GpuSettings

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]

ALERTS_FIRING = Gauge("switchboard_gpu_alerts_firing", "GPU alerts firing on this node.")
RECORD_FAILURES = Counter(
    "switchboard_gpu_alert_record_failures_total",
    "Alert transitions that could not be written to the local alert store.",
)
# History queries scan ClickHouse; a month of samples at 1d takes a while.
HISTORY_TIMEOUT_S = 30.0
MAX_NOTIFICATIONS = 1000


class Monitor:
    """Alert evaluation and recording, between the sampler and its watchers."""

    def __init__(
        self,
        evaluator: AlertEvaluator,
        *,
        store: AlertStore | None,
        publisher: HistoryPublisher | None,
        saturated_percent: float,
        clock: Clock,
    ) -> None:
        self.evaluator = evaluator
        self.store = store
        self.publisher = publisher
        self.saturated_percent = saturated_percent
        self.clock = clock
        # Set once the sampler exists: hands alerts to the watchers.
        self.announce: Callable[[Sequence[gpu_pb2.GpuAlert]], None] = lambda alerts: None
        # Set where a channel is configured: sends the rules' notifications.
        self.notifier: Notifier | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def process(self, status: gpu_pb2.NodeStatus) -> list[gpu_pb2.GpuAlert]:
        transitions = self.evaluator.evaluate(status)
        active = self.evaluator.active()
        for device in status.devices:
            mine = [a for a in active if a.gpu_uuid == device.uuid and not a.model]
            annotate(device, mine, self.saturated_percent)
        ALERTS_FIRING.set(len(active))
        await self.record(transitions)
        if self.publisher is not None:
            self.publisher.offer(status)
        return transitions

    async def record(self, alerts: Sequence[gpu_pb2.GpuAlert]) -> None:
        if self.notifier is not None and alerts:
            channels = {r.name: list(r.notification_channels) for r in self.evaluator.rules}
            self.notifier.enqueue(alerts, channels)
        if self.store is None or not alerts:
            return
        events = [events_pb2.GpuAlertEvent(event_id=uuid7(), alert=a) for a in alerts]
        try:
            await self.store.append(events)
        except Exception:
            # The local disk failed: still announce the alerts (below, by the
            # caller), and say loudly that history will miss them.
            RECORD_FAILURES.inc(len(events))
            log.exception(
                "gpu alert events could not be stored; they will not reach ClickHouse",
                extra=log_fields(alert_ids=[a.alert_id for a in alerts]),
            )

    def on_snapshot(self, snapshot: registry_pb2.Snapshot) -> None:
        """Registry follower callback: the rules apply from the next sample;
        alerts of rules that went away resolve now."""
        resolved = self.evaluator.set_rules(
            list(snapshot.alert_rules), snapshot.version, self.clock()
        )
        log.info(
            "gpu alert rules",
            extra=log_fields(
                version=snapshot.version, rules=[r.name for r in self.evaluator.rules]
            ),
        )
        if resolved:
            ALERTS_FIRING.set(len(self.evaluator.active()))
            task = asyncio.get_running_loop().create_task(self.record_and_announce(resolved))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def record_and_announce(self, alerts: Sequence[gpu_pb2.GpuAlert]) -> None:
        await self.record(alerts)
        self.announce(alerts)

    async def settle(self) -> None:
        """Wait for resolutions still being recorded (at shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class HistoryClient:
    """Forwards history questions to the usage service's GpuHistoryService."""

    def __init__(self, address: str, tls: TlsFiles | None = None) -> None:
        self.address = address
        self._channel = service_channel(address, tls)
        self._stub = history_pb2_grpc.GpuHistoryServiceStub(self._channel)

    @staticmethod
    def _metadata() -> tuple[tuple[str, str], ...]:
        request_id = request_id_var.get()
        return ((REQUEST_ID_KEY, request_id),) if request_id else ()

    async def query(self, query: gpu_pb2.QueryGpuHistoryRequest) -> gpu_pb2.QueryGpuHistoryResponse:
        try:
            reply = await self._stub.QueryStoredHistory(
                history_pb2.QueryStoredHistoryRequest(query=query),
                timeout=HISTORY_TIMEOUT_S,
                metadata=self._metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, "usage") from None
        return reply.result

    async def alerts(self, query: gpu_pb2.ListGpuAlertsRequest) -> gpu_pb2.ListGpuAlertsResponse:
        try:
            reply = await self._stub.ListStoredAlerts(
                history_pb2.ListStoredAlertsRequest(query=query),
                timeout=HISTORY_TIMEOUT_S,
                metadata=self._metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, "usage") from None
        return reply.result

    async def model_performance(self, window: str) -> usage_pb2.GetUsagePerformanceResponse:
        """Every caller's traffic per model over the last `window`."""
        try:
            reply = await self._stub.QueryModelPerformance(
                history_pb2.QueryModelPerformanceRequest(
                    query=usage_pb2.GetUsagePerformanceRequest(window=window)
                ),
                timeout=HISTORY_TIMEOUT_S,
                metadata=self._metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, "usage") from None
        return reply.result

    async def close(self) -> None:
        await self._channel.close()


class GpuServicer(gpu_pb2_grpc.GpuServiceServicer, gpu_pb2_grpc.GpuFeedServiceServicer):
    def __init__(
        self, sampler: Sampler, monitor: Monitor, history: HistoryClient, engines: EngineStatuses
    ) -> None:
        self._sampler = sampler
        self._monitor = monitor
        self._history = history
        # Set when the server drains, so open watches end instead of holding
        # the server for its whole grace period.
        self.draining = asyncio.Event()
        self.feed = MonitorServicer(sampler, engines, self.draining)

    async def GetGpuStatus(
        self, request: gpu_pb2.GetGpuStatusRequest, context: Context
    ) -> gpu_pb2.GetGpuStatusResponse:
        evaluator = self._monitor.evaluator
        return gpu_pb2.GetGpuStatusResponse(
            status=self._sampler.latest,
            active_alerts=evaluator.active(),
            rules=evaluator.rules,
            registry_version=evaluator.registry_version or 0,
        )

    async def WatchGpuMetrics(
        self, request: gpu_pb2.WatchGpuMetricsRequest, context: Context
    ) -> AsyncIterator[gpu_pb2.WatchGpuMetricsResponse]:
        # Samples come about every interval_s, with jitter; allowing half a
        # service interval of slack keeps a watcher that asks for the service's
        # own rate from skipping every other sample.
        min_gap_s = request.interval_ms / 1000 - self._sampler.config.interval_s / 2
        # Subscribed before the first answer, so nothing between falls through
        # (an alert may then come twice; watchers key alerts by alert_id).
        with self._sampler.watch() as updates:
            sent_at = time.monotonic()
            yield gpu_pb2.WatchGpuMetricsResponse(metrics_update=self._sampler.latest)
            for alert in self._monitor.evaluator.active():
                yield gpu_pb2.WatchGpuMetricsResponse(alert=alert)
            drained = asyncio.ensure_future(self.draining.wait())
            try:
                while True:
                    update = asyncio.ensure_future(updates.get())
                    await asyncio.wait({update, drained}, return_when=asyncio.FIRST_COMPLETED)
                    if not update.done():
                        update.cancel()
                        return
                    event = update.result()
                    if event.HasField("metrics_update"):
                        if time.monotonic() - sent_at < min_gap_s:
                            continue
                        sent_at = time.monotonic()
                    yield event
            finally:
                drained.cancel()

    async def WatchGpuFeed(
        self, request: gpu_pb2.WatchGpuMetricsRequest, context: Context
    ) -> AsyncIterator[gpu_pb2.WatchGpuMetricsResponse]:
        """The same stream, for other services (GpuFeedService, internal)."""
        async for event in self.WatchGpuMetrics(request, context):
            yield event

    async def WatchMonitor(
        self, request: gpu_pb2.WatchMonitorRequest, context: Context
    ) -> AsyncIterator[gpu_pb2.WatchMonitorResponse]:
        unknown = [e for e in request.events if e not in EVENTS]
        if unknown:
            raise SwitchboardError(
                R.ERROR_REASON_INVALID_REQUEST,
                f"unknown events {unknown}; known: {', '.join(EVENTS)}",
                param="events",
            )
        # Headers now: the first event may be a while (no engines, no GPUs).
        await context.send_initial_metadata(())
        async for event in self.feed.watch(request.events, self._monitor.evaluator.active()):
            yield event

    async def QueryGpuHistory(
        self, request: gpu_pb2.QueryGpuHistoryRequest, context: Context
    ) -> gpu_pb2.QueryGpuHistoryResponse:
        return await self._history.query(request)

    async def ListGpuAlerts(
        self, request: gpu_pb2.ListGpuAlertsRequest, context: Context
    ) -> gpu_pb2.ListGpuAlertsResponse:
        return await self._history.alerts(request)

    async def ListAlertNotifications(
        self, request: gpu_pb2.ListAlertNotificationsRequest, context: Context
    ) -> gpu_pb2.ListAlertNotificationsResponse:
        reply = gpu_pb2.ListAlertNotificationsResponse(hostname=self._sampler.config.hostname)
        notifier = self._monitor.notifier
        if notifier is not None:
            limit = min(request.limit, MAX_NOTIFICATIONS) if request.limit > 0 else 100
            reply.channels.extend(notifier.channels)
            reply.notifications.extend(notifier.notifications(limit))
        return reply


def _follow(snapshot: registry_pb2.Snapshot, monitor: Monitor, sampler: Sampler) -> None:
    """Registry follower callback: the alert rules, and the sampling interval
    (seed 004's gpu_monitor_interval) when one is set."""
    monitor.on_snapshot(snapshot)
    settings = snapshot.service_settings
    sampler.retune(
        float(settings.gpu_monitor_interval_s)
        if settings.HasField("gpu_monitor_interval_s")
        else None
    )


async def setup(
    server: grpc.aio.Server,
    settings: Settings,
    *,
    backend: NvmlBackend | None = None,
    config: SamplerConfig | None = None,
    clock: Clock = time.time,
    tick: Callable[[], Awaitable[None]] | None = None,
    publish: bool | None = None,
) -> Mounted:
    """Mount GpuService over the real NVML (or SWITCHBOARD_GPU_SCRIPT's). Tests
    pass `backend` (e.g. ScriptedNvml), `config`, a `clock` and a `tick` through
    functools.partial. `publish` (default: SWITCHBOARD_GPU_PUBLISH is not 0)
    sends history to Kafka and keeps alert events in the local store."""
    # Read once, here: a bad value fails the start, naming the variable.
    own = GpuSettings.from_env(settings)
    config = config or own.sampler
    if publish is None:
        publish = own.publish
    closers: list[Callable[[], Awaitable[None]]] = []

    async def close() -> None:
        for closer in reversed(closers):
            try:
                await closer()
            except Exception:
                log.exception("error while closing the gpu service")

    try:
        store: AlertStore | None = None
        publisher: HistoryPublisher | None = None
        if publish:
            publishing = own.publisher
            store = AlertStore(settings.home / "gpu" / "alerts.sqlite", publishing.outbox.max_bytes)
            firing = await store.open()
            closers.append(store.close)
            publisher = HistoryPublisher(publishing, store)
        else:
            firing = []
        evaluator = AlertEvaluator(config.hostname)
        evaluator.adopt(firing)
        monitor = Monitor(
            evaluator,
            store=store,
            publisher=publisher,
            saturated_percent=config.saturated_percent,
            clock=clock,
        )
        closers.append(monitor.settle)
        webhook, email = own.webhook, own.email
        if webhook is not None or email is not None:
            notifier = Notifier(settings.home / "gpu" / "notifications.sqlite", webhook, email)
            notifier.start()
            closers.append(notifier.close)
            monitor.notifier = notifier
        sampler = Sampler(
            backend or backend_for(own.script),
            config,
            clock=clock,
            process=monitor.process,
            tick=tick,
        )
        monitor.announce = sampler.publish_alerts
        await sampler.start()
        closers.append(sampler.stop)

        if publisher is not None:
            publisher.start()
            closers.append(publisher.close)

        # GPU status must not depend on the registry: rules arrive when it answers,
        # and until then none are evaluated (adopted alerts stay firing).
        registry = service_channel(settings.address("registry"), settings.tls)
        closers.append(registry.close)
        follower = RegistryFollower(
            registry_pb2_grpc.RegistrySnapshotServiceStub(registry),
            lambda snapshot: _follow(snapshot, monitor, sampler),
        )
        follower.start()
        closers.append(follower.close)

        history = HistoryClient(settings.address("usage"), settings.tls)
        closers.append(history.close)
        model_alerts = ModelAlerts(
            evaluator,
            history.model_performance,
            monitor.record_and_announce,
            own.model_alerts,
            clock,
        )
        model_alerts.start()
        closers.append(model_alerts.close)

        # Model statuses for the monitor feed, from this node's engine service.
        engine = service_channel(settings.address("engine"), settings.tls)
        closers.append(engine.close)
        engines = EngineStatuses(engine_pb2_grpc.EngineFeedServiceStub(engine))
        engines.start()
        closers.append(engines.close)
        servicer = GpuServicer(sampler, monitor, history, engines)
        if settings.monitor_port():  # 0: no WebSocket server (as for the metrics port)
            socket = MonitorSocket(
                servicer.feed, evaluator.active, settings.admin_key, own.monitor_ping_s
            )
            await socket.start(f"{settings.host}:{settings.monitor_port()}", settings.tls)
            closers.append(socket.close)
    except BaseException:
        await close()
        raise

    gpu_pb2_grpc.add_GpuServiceServicer_to_server(servicer, server)
    gpu_pb2_grpc.add_GpuFeedServiceServicer_to_server(servicer, server)
    names = [
        gpu_pb2.DESCRIPTOR.services_by_name[s].full_name for s in ("GpuService", "GpuFeedService")
    ]
    return Mounted(names, [close], drainers=[servicer.draining.set])
