"""UsageService: records in (acked once durable), summaries out.

In one process: the outbox, its relay to Kafka and its reconciler, and the sink
from Kafka into ClickHouse with the queries on top (the embedded engine allows
one opener per data path, so the sink and the queries share this process). The
sink confirms what it stored to the outbox in-process; records another replica's
sink stored (a ClickHouse server, several replicas) are confirmed by the
reconciler's lookup in ClickHouse.

For the same reason this process also writes GPU history (GpuSink, from the
gpu topics) and answers it (GpuHistoryService, which the gpu service's
QueryGpuHistory and ListGpuAlerts forward to)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from switchboard.gpu.v1 import history_pb2, history_pb2_grpc
from switchboard.registry.v1 import registry_pb2
from switchboard.usage.v1 import events_pb2, usage_pb2, usage_pb2_grpc
from switchboard_common import tracing
from switchboard_common.config import SwitchboardConfig
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.keys import KeyTable
from switchboard_common.logs import log_fields
from switchboard_common.pipeline.confirmations import ConfirmationPublisher
from switchboard_common.pipeline.kafka import (
    Backoff,
    Producer,
    cancelled_from_inside,
    ensure_topics,
)
from switchboard_common.pipeline.outbox import Outbox, OutboxFull
from switchboard_common.pipeline.relay import OutboxSource, Reconciler, Relay
from switchboard_common.pipeline.topics import USAGE_TOPIC
from switchboard_common.policy import current_caller
from switchboard_common.registry_follower import follow_registry
from switchboard_common.registry_snapshot import config_from_snapshot
from switchboard_common.server import Mounted, Setup
from switchboard_common.settings import Settings
from switchboard_usage import migrations, queries
from switchboard_usage.clickhouse import ClickHouse
from switchboard_usage.gpu_sink import GpuSink
from switchboard_usage.pricing import PriceBook
from switchboard_usage.settings import UsageSettings
from switchboard_usage.sink import Sink

log = logging.getLogger(__name__)
SERVICE = usage_pb2.DESCRIPTOR.services_by_name["UsageService"]
LEDGER_SERVICE = usage_pb2.DESCRIPTOR.services_by_name["UsageLedgerService"]
GPU_HISTORY_SERVICE = history_pb2.DESCRIPTOR.services_by_name["GpuHistoryService"]
Context = grpc.aio.ServicerContext[Any, Any]
GROUP_COMMIT = 500
# How long, once the server drains, a record stream goes on storing what was
# queued before the drain: a small backlog is made durable here, a large one
# does not hold the drain up (what is left unacked the routers resend). A
# fraction of the server's stop grace (10 s).
DRAIN_BACKLOG_S = 2.0


@dataclass(frozen=True)
class _Stop:
    """Queued after a stream's last message to store: at its end, when the
    server drains, or (error) when reading it failed."""

    error: Exception | None = None


_END = _Stop()


def _own_key() -> str | None:
    """Whose traffic a usage read covers: a client key's own (by the key name
    usage rows carry), or everyone's (None) for the admin key and an open edge."""
    caller = current_caller()
    return None if caller.sees_all else caller.name


class UsageServicer(usage_pb2_grpc.UsageServiceServicer, usage_pb2_grpc.UsageLedgerServiceServicer):
    def __init__(self, outbox: Outbox, prices: PriceBook, clickhouse: ClickHouse) -> None:
        self.outbox = outbox
        self.prices = prices
        self.clickhouse = clickhouse
        # Set when the server drains (drain()): open record streams end and
        # routers reconnect elsewhere, resending anything unacked.
        self.draining = asyncio.Event()
        self._drain_deadline = math.inf

    def drain(self) -> None:
        """Each open record stream stores what was queued before now, for at
        most DRAIN_BACKLOG_S, acks it, and ends."""
        self._drain_deadline = time.monotonic() + DRAIN_BACKLOG_S
        self.draining.set()

    async def RecordUsage(
        self, request_iterator: AsyncIterator[usage_pb2.RecordUsageRequest], context: Context
    ) -> AsyncIterator[usage_pb2.RecordUsageResponse]:
        # Group commit: every record that arrived while the last fsync ran is
        # written in the next transaction, then all of them are acked in one
        # message (records sent one per message, the old form, get one each).
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    queue.put_nowait(request)
            except Exception as exc:
                # A message that cannot be read ends the stream with its error
                # (after what came before it is stored and acked), rather than
                # leaving the stream open with nothing more to ack.
                queue.put_nowait(_Stop(exc))
                return
            queue.put_nowait(_END)

        reader = asyncio.create_task(read())
        # Draining ends the stream once what was queued before it is stored,
        # or at the drain's deadline, once the batch being stored is acked:
        # what is left unacked the router resends to another replica. (One
        # waiter per stream: a task per batch cost every ack a loop turn.)
        drained = asyncio.ensure_future(self.draining.wait())
        drained.add_done_callback(lambda _: queue.put_nowait(_END))
        try:
            # Met behind a batch: acted on once that batch is acked.
            stop: _Stop | None = None
            while stop is None and time.monotonic() < self._drain_deadline:
                first = await queue.get()
                if isinstance(first, _Stop):
                    stop = first
                    break
                requests = [first]
                size = _count(first)
                while not queue.empty() and size < GROUP_COMMIT:
                    request = queue.get_nowait()
                    if isinstance(request, _Stop):
                        stop = request
                        break
                    requests.append(request)
                    size += _count(request)
                traced = [item for request in requests for item in _records(request)]
                fresh = await self._store(traced)
                acks = [
                    usage_pb2.UsageAck(event_id=item.record.event_id, duplicate=not new)
                    for item, new in zip(traced, fresh, strict=True)
                ]
                owners = _owners(requests)
                batched = [ack for ack, b in zip(acks, owners, strict=True) if b]
                for ack, b in zip(acks, owners, strict=True):
                    if not b:
                        yield usage_pb2.RecordUsageResponse(
                            event_id=ack.event_id, duplicate=ack.duplicate
                        )
                if batched:
                    yield usage_pb2.RecordUsageResponse(acks=batched)
            if stop is not None and stop.error is not None:
                raise stop.error
        finally:
            drained.cancel()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _store(self, traced: Sequence[usage_pb2.TracedUsageRecord]) -> list[bool]:
        """Price and append records to the outbox in one transaction; True per new one."""
        events = [self._event(item.record) for item in traced]
        spans = [_record_span(item, e) for item, e in zip(traced, events, strict=True)]
        failure: BaseException | None = None
        try:
            return await self.outbox.append(
                [
                    (e.record.event_id, e.record.event_id.encode(), e.SerializeToString())
                    for e in events
                ],
                traces=[tracing.traceparent(span) for span in spans],
            )
        except OutboxFull as exc:
            failure = exc
            raise SwitchboardError(R.ERROR_REASON_SERVICE_UNAVAILABLE, str(exc)) from None
        finally:
            for span in spans:
                tracing.end(span, failure)

    def _event(self, record: usage_pb2.UsageRecord) -> events_pb2.UsageEvent:
        if not record.event_id:
            raise SwitchboardError(
                R.ERROR_REASON_INVALID_REQUEST,
                "record.event_id is required",
                param="record.event_id",
            )
        return self.prices.price(record)

    async def GetUsageSummary(
        self, request: usage_pb2.GetUsageSummaryRequest, context: Context
    ) -> usage_pb2.GetUsageSummaryResponse:
        return await queries.summary(self.clickhouse, request, _own_key())

    async def GetUsagePerformance(
        self, request: usage_pb2.GetUsagePerformanceRequest, context: Context
    ) -> usage_pb2.GetUsagePerformanceResponse:
        return await queries.performance(self.clickhouse, request, _own_key())

    async def GetUsageTimeseries(
        self, request: usage_pb2.GetUsageTimeseriesRequest, context: Context
    ) -> usage_pb2.GetUsageTimeseriesResponse:
        return await queries.timeseries(self.clickhouse, request, _own_key())

    async def GetSpend(
        self, request: usage_pb2.GetSpendRequest, context: Context
    ) -> usage_pb2.GetSpendResponse:
        unconfirmed = [r.payload for r in await self.outbox.records()]
        cost, currency, pending = await queries.spend(self.clickhouse, request, unconfirmed)
        return usage_pb2.GetSpendResponse(
            cost=cost + pending, currency=currency, pending_cost=pending
        )


class GpuHistoryServicer(history_pb2_grpc.GpuHistoryServiceServicer):
    def __init__(self, clickhouse: ClickHouse) -> None:
        self.clickhouse = clickhouse

    async def QueryStoredHistory(
        self, request: history_pb2.QueryStoredHistoryRequest, context: Context
    ) -> history_pb2.QueryStoredHistoryResponse:
        result = await queries.gpu_history(self.clickhouse, request.query)
        return history_pb2.QueryStoredHistoryResponse(result=result)

    async def ListStoredAlerts(
        self, request: history_pb2.ListStoredAlertsRequest, context: Context
    ) -> history_pb2.ListStoredAlertsResponse:
        result = await queries.gpu_alerts(self.clickhouse, request.query)
        return history_pb2.ListStoredAlertsResponse(result=result)

    async def QueryModelPerformance(
        self, request: history_pb2.QueryModelPerformanceRequest, context: Context
    ) -> history_pb2.QueryModelPerformanceResponse:
        # Every key's traffic: an alert on a model's latency is about the model.
        result = await queries.performance(self.clickhouse, request.query, None)
        return history_pb2.QueryModelPerformanceResponse(result=result)


def _records(request: usage_pb2.RecordUsageRequest) -> list[usage_pb2.TracedUsageRecord]:
    """A message's records, whichever form it came in."""
    if request.records:
        return list(request.records)
    return [usage_pb2.TracedUsageRecord(record=request.record, traceparent=request.traceparent)]


def _count(request: usage_pb2.RecordUsageRequest) -> int:
    """Records in a message."""
    return len(request.records) or 1


def _owners(requests: Sequence[usage_pb2.RecordUsageRequest]) -> list[bool]:
    """Per record, in order: whether its message used the batched form."""
    return [bool(r.records) for r in requests for _ in range(len(r.records) or 1)]


def _record_span(
    request: usage_pb2.TracedUsageRecord, event: events_pb2.UsageEvent
) -> tracing.Span:
    """The usage record's span, in the trace of the attempt that produced it
    (the stream itself spans many requests)."""
    remote = tracing.parent(request.traceparent)
    if remote is None:
        return tracing.NOT_TRACED
    record = event.record
    return tracing.start(
        "usage.record",
        tracing.SpanKind.SERVER,
        remote,
        {
            tracing.REQUEST_ID: record.request_id,
            tracing.OPERATION: tracing.operation(
                usage_pb2.Operation.Name(record.operation).removeprefix("OPERATION_").lower()
            ),
            tracing.PROVIDER: record.provider,
            tracing.REQUEST_MODEL: record.requested_model,
            tracing.RESPONSE_MODEL: record.upstream_model,
            tracing.INPUT_TOKENS: record.prompt_tokens,
            tracing.OUTPUT_TOKENS: record.completion_tokens,
            "switchboard.event_id": record.event_id,
        },
    )


def stored_lookup(clickhouse: ClickHouse) -> Callable[[Sequence[str]], Awaitable[set[str]]]:
    """The reconciler's question: which of these usage event ids does ClickHouse hold?"""

    async def lookup(event_ids: Sequence[str]) -> set[str]:
        rows = await clickhouse.rows(
            "SELECT event_id FROM usage_events WHERE event_id IN {ids:Array(String)}",
            {"ids": list(event_ids)},
        )
        return {event_id for (event_id,) in rows}

    return lookup


async def setup(server: grpc.aio.Server, settings: Settings) -> Mounted:
    return await _setup(server, settings, ClickHouse)


def make_setup(connect: Callable[[str], ClickHouse]) -> Setup:
    """The usage service's setup with its ClickHouse client made by `connect`:
    the seam the fault drills use (tests/support/usage_faults.py)."""

    async def setup_with(server: grpc.aio.Server, settings: Settings) -> Mounted:
        return await _setup(server, settings, connect)

    return setup_with


async def _setup(
    server: grpc.aio.Server, settings: Settings, connect: Callable[[str], ClickHouse]
) -> Mounted:
    # Read once, here: a bad value fails the start, naming the variable.
    own = UsageSettings.from_env(settings)
    outbox_settings = own.outbox
    clickhouse = connect(settings.clickhouse_url)
    await clickhouse.open()
    await migrations.apply(clickhouse)
    outbox = Outbox(
        settings.home / "usage" / "outbox.sqlite",
        "usage",
        USAGE_TOPIC,
        max_bytes=outbox_settings.max_bytes,
    )
    await outbox.open()
    kafka = own.kafka
    relay = Relay("usage", [OutboxSource(outbox)], Producer(kafka), gather_s=0.05)
    reconciler = Reconciler(outbox, outbox_settings.confirm_after_s, stored_lookup(clickhouse))
    embedded = clickhouse.embedded

    async def confirm(topic: str, event_ids: Sequence[str]) -> None:
        await outbox.confirm(event_ids)

    sink = Sink(
        clickhouse,
        kafka,
        replay=own.sink_replay,
        assign_all=embedded,
        confirmers=[confirm],
    )
    gpu_sink = GpuSink(clickhouse, kafka, assign_all=embedded, flush_s=own.gpu_sink_flush_s)
    gpu_sink.confirmers.append(ConfirmationPublisher(gpu_sink.producer))

    async def pipeline() -> None:
        # Serving never waits for the broker: topics are ensured in the background.
        backoff = Backoff()
        while True:
            try:
                await ensure_topics(kafka)
                break
            except Exception as exc:
                log.warning(
                    "broker not reachable; retrying", extra=log_fields(error=type(exc).__name__)
                )
                await backoff.sleep()
        await asyncio.gather(
            supervised("relay", relay.run),
            supervised("reconciler", reconciler.run),
            supervised("sink", sink.run),
            supervised("gpu sink", gpu_sink.run),
        )

    async def supervised(name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Keep a pipeline stage alive: log an unexpected failure and restart it."""
        while True:
            try:
                await run()
            except asyncio.CancelledError:
                if not cancelled_from_inside():
                    raise
                log.warning("usage %s was cancelled from inside; restarting", name)
            except Exception:
                log.exception("usage %s failed; restarting", name)
            await asyncio.sleep(1.0)

    task = asyncio.create_task(pipeline())
    servicer = UsageServicer(outbox, PriceBook(SwitchboardConfig(), 0), clickhouse)

    keys = KeyTable()

    def reprice(snapshot: registry_pb2.Snapshot) -> None:
        config = config_from_snapshot(snapshot)
        servicer.prices = PriceBook(config, snapshot.version)
        keys.replace(config)

    try:
        follower = await follow_registry(settings, reprice)
    except BaseException:
        task.cancel()
        raise
    usage_pb2_grpc.add_UsageServiceServicer_to_server(servicer, server)
    usage_pb2_grpc.add_UsageLedgerServiceServicer_to_server(servicer, server)
    history_pb2_grpc.add_GpuHistoryServiceServicer_to_server(GpuHistoryServicer(clickhouse), server)

    async def close() -> None:
        await follower.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await relay.close()
        await sink.close()
        await gpu_sink.close()
        await outbox.close()
        await clickhouse.close()

    return Mounted(
        [SERVICE.full_name, LEDGER_SERVICE.full_name, GPU_HISTORY_SERVICE.full_name],
        [close],
        drainers=[servicer.drain],
        keys=keys,
    )
