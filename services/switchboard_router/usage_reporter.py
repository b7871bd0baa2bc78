"""Router → usage service: one bidirectional stream, records acked once durable.

Records queued while the previous write was in flight go out together in one
message, and the usage service acks each group commit in one message: under
load the hop costs a fraction of a message per record, and idle it sends each
record at once (nothing waits to fill a batch).

A record stays in `pending` until the usage service acks it (it acks once the
record is durable in its outbox). After any stream failure the reporter
reconnects with backoff and resends everything unacked; the usage service and
the sink deduplicate by event_id. The buffer is bounded: when it is full the
router refuses new requests (fails closed) rather than serve calls it cannot
account for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from prometheus_client import Gauge

from switchboard.usage.v1 import usage_pb2, usage_pb2_grpc
from switchboard_common import tracing
from switchboard_common.logs import log_fields

log = logging.getLogger(__name__)

PENDING = Gauge(
    "switchboard_router_usage_pending", "Usage records not yet acked by the usage service."
)
MAX_BACKOFF_S = 2.0
# The most records one message carries (a resend after a reconnect can queue
# thousands; one message must stay well under gRPC's 4 MB limit).
MAX_BATCH = 256
# How long stopping waits for the sender (and close() for the stream task).
STOP_WAIT_S = 2.0


class UsageReporter:
    def __init__(self, stub: usage_pb2_grpc.UsageLedgerServiceAsyncStub, max_pending: int) -> None:
        self.stub = stub
        self.max_pending = max_pending
        self.pending: dict[str, usage_pb2.UsageRecord] = {}
        # The traceparent each pending record was submitted under (tracing on).
        self._traces: dict[str, str] = {}
        self._outgoing: asyncio.Queue[usage_pb2.UsageRecord] = asyncio.Queue()
        self._drained = asyncio.Event()
        self._drained.set()
        self._task: asyncio.Task[None] | None = None
        # Whether the usage service ever acked: if it never did, waiting at
        # shutdown cannot help, so close() does not.
        self._ever_acked = False
        # Whether the current stream has acked: while it is down, callers do
        # not wait for acks (records wait in `pending` instead).
        self._healthy = False
        self._waiters: dict[str, asyncio.Future[bool]] = {}

    @property
    def connected(self) -> bool:
        """Whether the usage service is acking records now."""
        return self._healthy

    @property
    def full(self) -> bool:
        return len(self.pending) >= self.max_pending

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def submit(self, record: usage_pb2.UsageRecord) -> None:
        """Queue a record; synchronous, so a cancelled request cannot skip it."""
        self.pending[record.event_id] = record
        trace = tracing.traceparent()
        if trace:
            self._traces[record.event_id] = trace
        self._drained.clear()
        PENDING.set(len(self.pending))
        self._outgoing.put_nowait(record)

    async def durable(self, event_id: str, timeout_s: float) -> bool:
        """Wait until the usage service has the record on disk (its ack), so a
        reply is not sent for a call this router could still lose by crashing.
        Returns at once, False, while the usage stream is down: then serving
        goes on and the record waits in memory to be resent (bounded, see full)."""
        if event_id not in self.pending:
            return True
        if not self._healthy:
            return False
        waiter = self._waiters.get(event_id)
        if waiter is None:
            waiter = self._waiters[event_id] = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
        except TimeoutError:
            return False
        finally:
            if waiter.done():
                self._waiters.pop(event_id, None)

    def _acked(self, event_id: str) -> None:
        self.pending.pop(event_id, None)
        self._traces.pop(event_id, None)
        waiter = self._waiters.pop(event_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            call = self.stub.RecordUsage()
            # Resend everything unacked, in order, before anything new.
            self._outgoing = asyncio.Queue()
            for record in list(self.pending.values()):
                self._outgoing.put_nowait(record)
            sender = asyncio.create_task(self._send(call))
            try:
                async for response in call:
                    self._ever_acked = self._healthy = True
                    for ack in response.acks:
                        self._acked(ack.event_id)
                    PENDING.set(len(self.pending))
                    backoff = 0.05
                    if not self.pending:
                        self._drained.set()
            except grpc.aio.AioRpcError as exc:
                self._healthy = False
                for waiter in self._waiters.values():
                    if not waiter.done():
                        waiter.set_result(False)
                self._waiters.clear()
                log.warning(
                    "usage stream broke; resending unacked records",
                    extra=log_fields(code=exc.code().name, pending=len(self.pending)),
                )
            finally:
                # The call first: that ends a write the sender is blocked in
                # (one to a usage service that never answered), so the sender
                # can end. asyncio.wait, not `await sender`: it neither raises
                # what the sender ended with nor swallows a cancellation of this
                # task (close() cancels it; a swallowed cancel would loop
                # forever); bounded, so a sender that ignores its cancel cannot
                # stop the reporter (or the router's shutdown) for good.
                call.cancel()
                sender.cancel()
                await asyncio.wait({sender}, timeout=STOP_WAIT_S)
                if not sender.done():
                    log.error("usage sender did not stop within %ss", STOP_WAIT_S)
                elif not sender.cancelled() and sender.exception() is not None:
                    log.debug("usage sender ended", exc_info=sender.exception())
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _send(
        self,
        call: grpc.aio.StreamStreamCall[
            usage_pb2.RecordUsageRequest, usage_pb2.RecordUsageResponse
        ],
    ) -> None:
        queue = self._outgoing
        while True:
            records = [await queue.get()]
            while not queue.empty() and len(records) < MAX_BATCH:
                records.append(queue.get_nowait())
            request = usage_pb2.RecordUsageRequest(
                records=[
                    usage_pb2.TracedUsageRecord(
                        record=record, traceparent=self._traces.get(record.event_id, "")
                    )
                    for record in records
                    # Acked while it waited (a resend raced its first ack).
                    if record.event_id in self.pending
                ]
            )
            if request.records:
                await call.write(request)

    async def close(self, flush_s: float) -> None:
        """Give unacked records up to flush_s to be acked, then stop."""
        if self._ever_acked:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), flush_s)
        if self.pending:
            log.error(
                "stopping with unacked usage records",
                extra=log_fields(pending=len(self.pending)),
            )
        if self._task is not None:
            self._task.cancel()
            # Whatever the stream ended with, closing goes on: the closers after
            # this one (the limiter's Redis pool, the channels) must still run,
            # also if the task does not end (bounded).
            await asyncio.wait({self._task}, timeout=2 * STOP_WAIT_S)
            if not self._task.done():
                log.error("usage stream task did not stop")
            elif not self._task.cancelled() and self._task.exception() is not None:
                log.error("usage stream task failed", exc_info=self._task.exception())
