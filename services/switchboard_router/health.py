"""The suite's health as a router sees it: GET /healthz (GetHealth) and the
router's readiness.

A monitor probes what serving needs every PERIOD_S, so /healthz answers from
a report at most that old and costs no upstream calls per request:
- provider: the grpc.health.v1 check over the router's own provider channel
  (the one calls use). Essential: without it nothing can be served.
- usage: the same check over the router's usage channel; while it is down
  calls go on and their records wait in memory, until that buffer is full:
  then the router refuses calls, so a full buffer is essential.
- registry: the age of the snapshot the router serves from (0 while its watch
  is up). Essential once older than registry_follower.MAX_STALE_S.
- gpu, engine (when the stack has one): checks; GPU-aware routing and
  self-hosted engines are optional, so these only degrade.

The suite can serve when every essential component is ok; otherwise GetHealth
says "unavailable" and the edge answers 503 (x-switchboard-http-status)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from switchboard.router.v1 import router_pb2
from switchboard_common.channels import channel as service_channel
from switchboard_common.errors import HTTP_STATUS_HEADER
from switchboard_common.logs import log_fields
from switchboard_common.registry_follower import MAX_STALE_S, RegistryFollower
from switchboard_common.settings import Settings
from switchboard_router.usage_reporter import UsageReporter

log = logging.getLogger(__name__)

PERIOD_S = 1.0
CHECK_TIMEOUT_S = 1.0
OK = "ok"


def _version() -> str:
    try:
        return importlib.metadata.version("switchboard")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


VERSION = _version()


@dataclass(frozen=True)
class Component:
    state: str  # "ok", "down" or "stale"
    detail: str = ""
    # Whether this state keeps the suite from serving.
    blocking: bool = False

    def describe(self) -> str:
        return self.state if not self.detail else f"{self.state}: {self.detail}"


@dataclass(frozen=True)
class Report:
    components: Mapping[str, Component]

    @property
    def can_serve(self) -> bool:
        return not any(c.blocking for c in self.components.values())

    @property
    def status(self) -> str:
        if not self.can_serve:
            return "unavailable"
        if any(c.state != OK for c in self.components.values()):
            return "degraded"
        return OK


async def check(channel: grpc.aio.Channel) -> str | None:
    """None when the service behind `channel` says SERVING, else why not."""
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=CHECK_TIMEOUT_S
        )
    except grpc.aio.AioRpcError as exc:
        return f"unreachable ({exc.code().name})"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return name
    return None


Probe = Callable[[], Awaitable[Component]]


def probe_service(channel: grpc.aio.Channel, *, essential: bool) -> Probe:
    async def probe() -> Component:
        why = await check(channel)
        return Component(OK) if why is None else Component("down", why, blocking=essential)

    return probe


async def embedded() -> Component:
    return Component(OK)  # in this process: up whenever the router is


def probe_usage(channel: grpc.aio.Channel, reporter: UsageReporter) -> Probe:
    async def probe() -> Component:
        pending = len(reporter.pending)
        why = await check(channel)
        if reporter.full:
            detail = f"{why or 'up'}; {pending} records unacked: the router refuses calls"
            return Component("down", detail, blocking=True)
        if why is None:
            return Component(OK)
        return Component("down", f"{why}; {pending} records wait to be resent")

    return probe


def probe_registry(follower: RegistryFollower) -> Probe:
    async def probe() -> Component:
        stale_s = follower.stale_s()
        version = f"snapshot v{follower.version}"
        if stale_s == 0:
            return Component(OK)
        detail = f"watch down for {stale_s:.0f}s, serving {version} (limit {MAX_STALE_S:g}s)"
        return Component("stale", detail, blocking=not follower.fresh())

    return probe


class HealthMonitor:
    def __init__(self, probes: Mapping[str, Probe], owned: Sequence[grpc.aio.Channel] = ()) -> None:
        """`owned`: channels only the probes use, closed with the monitor."""
        self._probes = dict(probes)
        self._owned = list(owned)
        self.report: Report | None = None
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> Report:
        names = list(self._probes)
        results = await asyncio.gather(*(self._probes[n]() for n in names))
        components = {"router": Component(OK), **dict(zip(names, results, strict=True))}
        report = Report(components)
        if self.report is not None and report.status != self.report.status:
            log.warning(
                "suite health changed",
                extra=log_fields(status=report.status, components=_described(report)),
            )
        self.report = report
        return report

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="health-monitor")

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("health probe failed")
            await asyncio.sleep(PERIOD_S)

    def ready(self) -> bool:
        return self.report is not None and self.report.can_serve

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for channel in self._owned:
            await channel.close()

    async def answer(
        self, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.GetHealthResponse:
        """GetHealth: each component's state; at the edge, 503 when the suite cannot serve."""
        report = self.report or await self.refresh()
        if not report.can_serve:
            await context.send_initial_metadata(((HTTP_STATUS_HEADER, "503"),))
        return router_pb2.GetHealthResponse(
            status=report.status, version=VERSION, components=_described(report)
        )


def _described(report: Report) -> dict[str, str]:
    return {name: c.describe() for name, c in report.components.items()}


def suite_monitor(
    settings: Settings,
    provider: grpc.aio.Channel | None,
    usage: grpc.aio.Channel,
    reporter: UsageReporter,
    follower: RegistryFollower,
    gpu_addresses: Sequence[str],
) -> HealthMonitor:
    """The router's monitor: the provider and usage are probed over the channels
    calls use (no provider channel: it runs in this process); the optional
    components (the first gpu service, the engine when the stack has one) over
    channels of their own."""
    optional = {"gpu": gpu_addresses[0]} if gpu_addresses else {}
    if "engine" in settings.ports:
        optional["engine"] = settings.address("engine")
    channels = {name: service_channel(a, settings.tls) for name, a in optional.items()}
    probes = {
        "provider": probe_service(provider, essential=True) if provider else embedded,
        "registry": probe_registry(follower),
        "usage": probe_usage(usage, reporter),
        **{name: probe_service(c, essential=False) for name, c in channels.items()},
    }
    return HealthMonitor(probes, list(channels.values()))
