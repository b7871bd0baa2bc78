"""Follow the registry: a full snapshot, then its changes, over WatchSnapshot.

A follower survives registry restarts: it keeps its last snapshot (services
keep serving from it), reconnects with jittered backoff, and asks only for what
changed since the version it holds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Awaitable, Callable

import grpc
from prometheus_client import Counter, Gauge

from switchboard.registry.v1 import registry_pb2 as pb
from switchboard.registry.v1 import registry_pb2_grpc
from switchboard_common.channels import channel as service_channel
from switchboard_common.logs import log_fields
from switchboard_common.registry_snapshot import apply_change
from switchboard_common.settings import Settings

log = logging.getLogger(__name__)

SNAPSHOT_VERSION = Gauge(
    "switchboard_registry_snapshot_version", "The registry version this process serves with."
)
RECONNECTS = Counter(
    "switchboard_registry_watch_reconnects", "Times the registry watch stream was re-opened."
)


class RegistryFollower:
    def __init__(
        self,
        stub: registry_pb2_grpc.RegistryServiceAsyncStub,
        on_update: Callable[[pb.Snapshot], None],
        *,
        max_backoff_s: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self._stub = stub
        self._on_update = on_update
        self._max_backoff_s = max_backoff_s
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter
        self.snapshot: pb.Snapshot | None = None
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def version(self) -> int:
        return self.snapshot.version if self.snapshot is not None else 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="registry-follower")

    async def first_snapshot(self, timeout_s: float) -> pb.Snapshot:
        """The first snapshot, or TimeoutError when the registry stays away."""
        await asyncio.wait_for(self._first.wait(), timeout_s)
        assert self.snapshot is not None
        return self.snapshot

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                call = self._stub.WatchSnapshot(pb.WatchSnapshotRequest(known_version=self.version))
                async for message in call:
                    self._receive(message)
                    backoff = 0.1
                reason = "stream ended"
            except grpc.aio.AioRpcError as err:
                reason = err.code().name
            RECONNECTS.inc()
            delay = self._rng.uniform(backoff / 2, backoff)
            log.warning(
                "registry watch interrupted; serving from the last snapshot and reconnecting",
                extra=log_fields(reason=reason, version=self.version, retry_in_s=round(delay, 2)),
            )
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, self._max_backoff_s)

    def _receive(self, message: pb.WatchSnapshotResponse) -> None:
        if message.HasField("snapshot"):
            snapshot = pb.Snapshot()
            snapshot.CopyFrom(message.snapshot)
        elif self.snapshot is not None and message.version > self.snapshot.version - 1:
            snapshot = pb.Snapshot()
            snapshot.CopyFrom(self.snapshot)
            apply_change(snapshot, message.change, message.version)
        else:
            return
        snapshot.version = message.version
        try:
            self._on_update(snapshot)
        except Exception:
            # A snapshot this process cannot use must not replace a good one.
            log.exception(
                "registry update rejected; keeping the previous config",
                extra=log_fields(version=message.version),
            )
            return
        self.snapshot = snapshot
        SNAPSHOT_VERSION.set(snapshot.version)
        self._first.set()


async def follow_registry(
    settings: Settings, on_update: Callable[[pb.Snapshot], None]
) -> Callable[[], Awaitable[None]]:
    """Follow the registry from service setup: returns once the first snapshot
    was applied (start fails with a clear error if the registry stays away for
    SWITCHBOARD_REGISTRY_WAIT_S), and hands back the closer for shutdown."""
    wait_s = float(os.environ.get("SWITCHBOARD_REGISTRY_WAIT_S") or 30)
    channel = service_channel(settings.address("registry"), settings.tls)
    follower = RegistryFollower(registry_pb2_grpc.RegistryServiceStub(channel), on_update)
    follower.start()

    async def close() -> None:
        await follower.close()
        await channel.close()

    try:
        await follower.first_snapshot(wait_s)
    except TimeoutError:
        await close()
        raise RuntimeError(
            f"the registry at {settings.address('registry')} did not answer within "
            f"{wait_s:g}s (SWITCHBOARD_REGISTRY_WAIT_S); start it first"
        ) from None
    return close
