"""Follow the registry: a full snapshot, then its changes, over WatchSnapshot.

A follower survives registry restarts: it keeps its last snapshot (services
keep serving from it), reconnects with jittered backoff, and asks only for what
changed since the version it holds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

import grpc
from prometheus_client import Counter, Gauge

from switchboard.registry.v1 import registry_pb2 as pb
from switchboard.registry.v1 import registry_pb2_grpc
from switchboard_common.channels import channel as service_channel
from switchboard_common.logs import follow_log_level, log_fields
from switchboard_common.registry_snapshot import apply_change
from switchboard_common.settings import Settings

log = logging.getLogger(__name__)

SNAPSHOT_VERSION = Gauge(
    "switchboard_registry_snapshot_version", "The registry version this process serves with."
)
# How long a service keeps reporting ready while its snapshot may be missing
# changes (the registry unreachable). Serving from the last snapshot is by
# design: a short registry outage must not take every replica out of rotation.
MAX_STALE_S = 300.0
RECONNECTS = Counter(
    "switchboard_registry_watch_reconnects", "Times the registry watch stream was re-opened."
)


class RegistryFollower:
    def __init__(
        self,
        stub: registry_pb2_grpc.RegistrySnapshotServiceAsyncStub,
        on_update: Callable[[pb.Snapshot], None],
        *,
        max_backoff_s: float = 5.0,
        rng: random.Random | None = None,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        """`channel`, if given, is the stub's, and is closed with the follower."""
        self._stub = stub
        self._on_update = on_update
        self._max_backoff_s = max_backoff_s
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter
        self.snapshot: pb.Snapshot | None = None
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._channel = channel
        # Whether the watch stream is up now, and since when (monotonic) it is not.
        self.connected = False
        self._lost_at = time.monotonic()

    @property
    def version(self) -> int:
        return self.snapshot.version if self.snapshot is not None else 0

    def stale_s(self) -> float:
        """How long the snapshot may have missed changes: 0 while the watch is
        up, else the time since it went down (or since start, before it came up)."""
        return 0.0 if self.connected else time.monotonic() - self._lost_at

    def fresh(self) -> bool:
        """Readiness: the snapshot is current, or missed changes for under MAX_STALE_S."""
        return self.stale_s() < MAX_STALE_S

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
        if self._channel is not None:
            await self._channel.close()

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                call = self._stub.WatchSnapshot(pb.WatchSnapshotRequest(known_version=self.version))
                async for message in call:
                    self._receive(message)
                    self.connected = True
                    backoff = 0.1
                reason = "stream ended"
            except grpc.aio.AioRpcError as err:
                reason = err.code().name
            if self.connected:
                self.connected = False
                self._lost_at = time.monotonic()
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
        # Every service that follows the registry takes its log level from it.
        follow_log_level(snapshot.service_settings.log_level)
        SNAPSHOT_VERSION.set(snapshot.version)
        self._first.set()


async def follow_registry(
    settings: Settings, on_update: Callable[[pb.Snapshot], None]
) -> RegistryFollower:
    """Follow the registry from service setup: returns the follower once the
    first snapshot was applied (start fails with a clear error if the registry
    stays away for SWITCHBOARD_REGISTRY_WAIT_S). Its close() also closes its channel."""
    wait_s = settings.registry_wait_s
    channel = service_channel(settings.address("registry"), settings.tls)
    follower = RegistryFollower(
        registry_pb2_grpc.RegistrySnapshotServiceStub(channel), on_update, channel=channel
    )
    follower.start()
    try:
        await follower.first_snapshot(wait_s)
    except TimeoutError:
        await follower.close()
        raise RuntimeError(
            f"the registry at {settings.address('registry')} did not answer within "
            f"{wait_s:g}s (SWITCHBOARD_REGISTRY_WAIT_S); start it first"
        ) from None
    return follower
