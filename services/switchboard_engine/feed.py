"""EngineFeedService: this node's engines as they change, for other services.

The gpu service's monitor relays it as seed 004's model_status_update. Every
state change goes through Slot.set_state, which tells Changes; a watcher gets
the engines as they are now, then each change, and each engine deleted. A
watcher that falls behind by more than QUEUE_LIMIT changes is ended (its
caller reconnects and starts again from the engines as they are), rather than
holding memory without bound."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from switchboard.engine.v1 import engine_pb2 as pb
from switchboard.engine.v1 import engine_pb2_grpc
from switchboard_engine.slot import Slot

Context = grpc.aio.ServicerContext[Any, Any]
QUEUE_LIMIT = 1000


def state_of(slot: Slot, node: str) -> pb.Engine:
    """The engine's name and state: what a change is (no process readings,
    which would cost a psutil call per change and move ListEngines' CPU sample)."""
    engine = pb.Engine(name=slot.name, state=slot.state, state_reason=slot.reason, node=node)
    engine.state_time.FromDatetime(slot.state_time)
    return engine


class Changes:
    def __init__(self, node: Callable[[], str]) -> None:
        # The node's name, as the settings hold it now.
        self.node = node
        self._watchers: set[asyncio.Queue[pb.WatchEnginesResponse | None]] = set()

    def changed(self, slot: Slot, *, deleted: bool = False) -> None:
        event = pb.WatchEnginesResponse(engine=state_of(slot, self.node()), deleted=deleted)
        for queue in list(self._watchers):
            if queue.qsize() >= QUEUE_LIMIT:
                self._watchers.discard(queue)
                queue.put_nowait(None)  # ends that watch: it fell behind
            else:
                queue.put_nowait(event)

    @contextlib.contextmanager
    def watch(self) -> Iterator[asyncio.Queue[pb.WatchEnginesResponse | None]]:
        queue: asyncio.Queue[pb.WatchEnginesResponse | None] = asyncio.Queue()
        self._watchers.add(queue)
        try:
            yield queue
        finally:
            self._watchers.discard(queue)


class EngineFeedServicer(engine_pb2_grpc.EngineFeedServiceServicer):
    def __init__(
        self, slots: Callable[[], list[Slot]], changes: Changes, draining: asyncio.Event
    ) -> None:
        self._slots = slots
        self._changes = changes
        self._draining = draining

    async def WatchEngines(
        self, request: pb.WatchEnginesRequest, context: Context
    ) -> AsyncIterator[pb.WatchEnginesResponse]:
        # Subscribed before the engines are read: no change falls between.
        with self._changes.watch() as queue:
            node = self._changes.node()
            for slot in self._slots():
                yield pb.WatchEnginesResponse(engine=state_of(slot, node))
            drained = asyncio.ensure_future(self._draining.wait())
            try:
                while True:
                    got = asyncio.ensure_future(queue.get())
                    await asyncio.wait({got, drained}, return_when=asyncio.FIRST_COMPLETED)
                    if not got.done():
                        got.cancel()
                        return
                    event = got.result()
                    if event is None:
                        return
                    yield event
            finally:
                drained.cancel()
