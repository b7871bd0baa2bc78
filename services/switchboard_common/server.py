"""The gRPC server every service runs: grpc.aio on uvloop, the standard health
and reflection services, our interceptors (the access policy among them), a
Prometheus side port, and a SIGTERM drain (NOT_SERVING first, so balancers stop
sending, then stop(grace)).

Health: the server's overall status ("") is liveness, SERVING from start until
draining. Each mounted service's own status is readiness: SERVING while the
service's `ready` check passes (re-evaluated every READINESS_PERIOD_S)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from switchboard_common import heap, tracing, workers
from switchboard_common.env import SettingsError
from switchboard_common.interceptors import ServerInterceptor
from switchboard_common.keys import KeyTable
from switchboard_common.logs import log_fields, setup_logging
from switchboard_common.metrics import serve_metrics
from switchboard_common.policy import AccessPolicy, Refusal
from switchboard_common.settings import Settings

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 32 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.enable_retries", 0),
    # Services restart within seconds of each other: reconnect that soon, not
    # after gRPC's default backoff of up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
READINESS_PERIOD_S = 1.0


def server_options(shared_port: bool) -> list[tuple[str, int]]:
    """SO_REUSEPORT only where workers share the port on purpose (gRPC turns it on
    by default on Linux): a second single process on a taken port then fails
    loudly instead of quietly taking half the connections."""
    return [*SERVER_OPTIONS, ("grpc.so_reuseport", 1 if shared_port else 0)]


@dataclass
class Mounted:
    """What a service's setup registered on the server.

    drainers run when draining starts, before the grace period: they end
    long-lived streams (watches) that would otherwise hold the server for the
    whole grace. closers run after the server stopped, and also when start-up
    fails after setup. keys is the client key table the access policy checks
    CLIENT methods against (required when a service has any); ready says whether
    the service can serve now (readiness; None: always once started)."""

    service_names: Sequence[str]
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    drainers: list[Callable[[], None]] = field(default_factory=list)
    keys: KeyTable | None = None
    ready: Callable[[], bool] | None = None
    # How the access policy's refusals are rendered, per method (default: as is).
    refusal: Refusal | None = None


Setup = Callable[[grpc.aio.Server, Settings], Awaitable[Mounted]]


async def serve(
    name: str,
    setup: Setup,
    settings: Settings,
    *,
    grace_s: float = 10.0,
    stop: asyncio.Event | None = None,
    worker: bool = False,
    bound: Callable[[int], None] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or `stop` is set), then drain. A worker shares
    its port with its siblings, leaves the metrics port to its supervisor, and
    tells it once it serves. `bound` is told the port once the server serves:
    the kernel's choice where settings ask for port 0."""
    policy = AccessPolicy(settings.admin_key)
    # The first interceptor is the outermost: it renders the policy's refusals.
    server = grpc.aio.server(
        interceptors=[ServerInterceptor(name), policy], options=server_options(worker)
    )
    mounted = await setup(server, settings)
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    readiness: asyncio.Task[None] | None = None
    try:
        policy.mount(mounted.service_names, mounted.keys, mounted.refusal)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        names = [*mounted.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)

        address = f"{settings.host}:{settings.ports[name]}"
        port = (
            server.add_secure_port(address, settings.tls.server_credentials())
            if settings.tls
            else server.add_insecure_port(address)
        )
        if port == 0:
            raise RuntimeError(f"{name}: cannot listen on {address}")
        metrics_port = 0 if worker else settings.metrics_port(name)
        if metrics_port:
            serve_metrics(metrics_port, settings.metrics_host)
        await server.start()
        heap.settle(settings.gc_gen0)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        ready = await _set_readiness(health_servicer, mounted, None)
        if mounted.ready is not None:
            readiness = asyncio.create_task(_report_readiness(health_servicer, mounted, ready))
        log.info(
            "serving",
            extra=log_fields(address=f"{settings.host}:{port}", metrics_port=metrics_port),
        )
        if worker:
            workers.report_ready()
        if bound is not None:
            bound(port)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

        log.info("draining", extra=log_fields(grace_s=grace_s))
        if readiness is not None:
            readiness.cancel()
        await health_servicer.enter_graceful_shutdown()
        # Give balancers that watch health time to stop sending before we refuse.
        if settings.drain_delay_s > 0:
            await asyncio.sleep(settings.drain_delay_s)
        for drain in mounted.drainers:
            drain()
        await server.stop(grace_s)
    finally:
        if readiness is not None:
            readiness.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.stop(None)
        for close in mounted.closers:
            try:
                await close()
            except Exception:
                log.exception("error while closing")
    log.info("stopped")


async def _set_readiness(
    servicer: health.aio.HealthServicer, mounted: Mounted, last: bool | None
) -> bool:
    """Make each mounted service's health status its readiness; returns it."""
    try:
        ready = mounted.ready() if mounted.ready is not None else True
    except Exception:
        log.exception("readiness check failed")
        ready = False
    if ready != last:
        if last is not None:
            log.warning("readiness changed", extra=log_fields(ready=ready))
        states = health_pb2.HealthCheckResponse
        status = states.SERVING if ready else states.NOT_SERVING
        for service_name in mounted.service_names:
            await servicer.set(service_name, status)
    return ready


async def _report_readiness(
    servicer: health.aio.HealthServicer, mounted: Mounted, last: bool
) -> None:
    while True:
        await asyncio.sleep(READINESS_PERIOD_S)
        last = await _set_readiness(servicer, mounted, last)


def main(name: str, setup: Setup, workers_check: workers.WorkersCheck | None = None) -> None:
    """Entry point of `python -m switchboard_<name>`. A service that passes
    `workers_check` runs SWITCHBOARD_WORKERS processes (see workers.py); the
    others run one whatever it says."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        # Before logging is set up (its level is one of these settings).
        print(f"switchboard-{name}: cannot start: {exc}", file=sys.stderr)
        sys.exit(2)
    index = workers.worker_index()
    setup_logging(name, settings.log_level, worker=index)
    if index is None:
        try:
            count = workers.worker_count()
        except workers.WorkersRefused as exc:
            log.error("cannot start", extra=log_fields(error=str(exc)))
            sys.exit(2)
        if count > 1 and workers_check is None:
            log.info("runs one process", extra=log_fields(workers=count))
        elif count > 1 and workers_check is not None:
            refusal = workers_check(settings)
            if refusal:
                log.error("cannot start workers", extra=log_fields(workers=count, error=refusal))
                sys.exit(2)
            sys.exit(workers.supervise(name, settings, count))
    else:
        workers.die_with_parent()
    tracing.setup(name)
    try:
        uvloop.run(serve(name, setup, settings, worker=index is not None))
    except SettingsError as exc:
        # A service's own settings are read in its setup: a bad value is an
        # operator's mistake to name, not a traceback.
        log.error("cannot start", extra=log_fields(error=str(exc)))
        sys.exit(2)
    finally:
        tracing.shutdown()
