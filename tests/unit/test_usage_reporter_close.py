"""The router's usage reporter closes whatever its stream ended with (issue 22):
a close that raised skipped the closers after it (the Redis pool leaked), and
one whose cancel was swallowed looped forever (the shutdown hung)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from switchboard.usage.v1 import usage_pb2
from switchboard_router.usage_reporter import UsageReporter

pytestmark = pytest.mark.asyncio


class _Call:
    """A RecordUsage stream that never acks and breaks when `broken` is set;
    its writes behave as `write` says."""

    def __init__(self, write: Any, broken: asyncio.Event) -> None:
        self.write = write
        self._broken = broken

    def __aiter__(self) -> AsyncIterator[usage_pb2.RecordUsageResponse]:
        return self._acks()

    async def _acks(self) -> AsyncIterator[usage_pb2.RecordUsageResponse]:
        await self._broken.wait()
        if self._broken.is_set():  # always, once awake: the stream breaks, never acks
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone"
            )
        yield usage_pb2.RecordUsageResponse()

    def cancel(self) -> bool:
        return True


class _Stub:
    def __init__(self, write: Any) -> None:
        self.calls = 0
        self.broken = asyncio.Event()
        self._write = write

    def RecordUsage(self) -> _Call:
        self.calls += 1
        return _Call(self._write, self.broken)


def _record(event_id: str) -> usage_pb2.UsageRecord:
    return usage_pb2.UsageRecord(event_id=event_id)


async def _started(stub: _Stub) -> UsageReporter:
    reporter = UsageReporter(stub, max_pending=10)  # type: ignore[arg-type]
    reporter.start()
    reporter.submit(_record("a"))
    # Let the stream start and its sender take the record.
    for _ in range(10):
        await asyncio.sleep(0)
    return reporter


async def test_close_returns_when_the_sender_died() -> None:
    async def finished(request: Any) -> None:
        raise asyncio.InvalidStateError("RPC already finished.")

    reporter = await _started(_Stub(finished))
    async with asyncio.timeout(5):
        await reporter.close(flush_s=0.1)  # neither raises nor hangs
    assert reporter.pending  # unacked: kept for the log, not lost silently


async def test_close_returns_when_its_cancel_lands_while_the_stream_winds_down() -> None:
    # The stream breaks; while the reporter waits for its sender to stop (a
    # write in flight finishing first), close() cancels the reporter. That
    # cancel used to be swallowed with the sender's: the reporter reconnected
    # and close() waited for it forever.
    resisting = asyncio.Event()

    async def stubborn(request: Any) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            resisting.set()
            await asyncio.sleep(0.2)
            raise

    stub = _Stub(stubborn)
    reporter = await _started(stub)
    stub.broken.set()
    async with asyncio.timeout(5):
        await resisting.wait()
        await reporter.close(flush_s=0.1)
    assert stub.calls == 1  # no new stream was opened after the close
