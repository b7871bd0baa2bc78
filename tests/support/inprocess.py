"""Real Switchboard gRPC servers inside the test's event loop, on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from switchboard_common.server import Setup, serve
from switchboard_common.settings import SERVICE_PORTS, Settings
from switchboard_common.tls import TlsFiles
from switchboard_stack.components import grpc_ready
from switchboard_stack.harness import free_port


def _setup(name: str) -> Setup:
    if name == "router":
        from switchboard_router.service import setup
    elif name == "provider":
        from switchboard_provider.service import setup
    elif name == "registry":
        from switchboard_registry.service import setup
    elif name == "usage":
        from switchboard_usage.service import setup
    else:
        raise ValueError(name)
    return setup


@contextlib.asynccontextmanager
async def serving(
    name: str, setup: Setup, settings: Settings, grace_s: float = 1
) -> AsyncIterator[tuple[Settings, asyncio.Task[None]]]:
    """`name` served on a port the kernel picks at the bind; yields `settings`
    with that port, and the server's task. A port picked before the bind can be
    picked by another test worker too: one of them then fails to bind, and its
    probes reach the other worker's server."""
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    own = dataclasses.replace(settings, ports={**settings.ports, name: 0})
    task = asyncio.create_task(
        serve(name, setup, own, grace_s=grace_s, stop=stop, bound=port.set_result)
    )
    started: list[asyncio.Future[Any]] = [port, task]
    try:
        async with asyncio.timeout(10):
            await asyncio.wait(started, return_when=asyncio.FIRST_COMPLETED)
        if not port.done():
            task.result()
            raise RuntimeError(f"{name} stopped while starting")
        settings = dataclasses.replace(settings, ports={**settings.ports, name: port.result()})
        await wait_serving(settings.address(name), task, settings.tls)
        yield settings, task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def services(
    config: Mapping[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    names: tuple[str, ...] = ("provider", "router"),
) -> AsyncIterator[Settings]:
    """Start `names` in order with `config`; drain and stop them on exit. The
    registry comes first whenever a service that follows it is started. Each
    knows the ports of those started before it; the others get ports where
    nothing listens."""
    if "registry" not in names:
        names = ("registry", *names)
    config_path = tmp_path / "switchboard.yaml"
    config_path.write_text(yaml.safe_dump(dict(config)))
    # Settings are read once: the metrics ports are turned off before.
    for name in SERVICE_PORTS:
        monkeypatch.setenv(f"SWITCHBOARD_{name.upper()}_METRICS_PORT", "0")
    base = Settings.from_env()
    settings = dataclasses.replace(
        base,
        home=tmp_path / "home",
        config_path=config_path,
        ports={name: free_port() for name in base.ports},
        host="127.0.0.1",
    )
    async with contextlib.AsyncExitStack() as stack:
        for name in names:
            settings, _ = await stack.enter_async_context(serving(name, _setup(name), settings))
        yield settings


async def wait_serving(address: str, task: asyncio.Task[None], tls: TlsFiles | None = None) -> None:
    """Until the gRPC health check at `address` says SERVING, or `task` died."""
    probe = grpc_ready(address, tls)
    async with asyncio.timeout(10):
        while not await probe():
            if task.done():
                task.result()
                raise RuntimeError(f"server at {address} stopped while starting")
            await asyncio.sleep(0.02)
