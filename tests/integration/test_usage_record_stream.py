"""The router → usage hop over a real gRPC server and a real outbox: records
queued together travel in one message and are acked in one, each is durable
when acked, a resend is a duplicate, and the one-record form of a router from
before batching is still acked record by record; a stream that cannot be read
ends with an error, and a draining server ends its streams cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from switchboard.usage.v1 import usage_pb2, usage_pb2_grpc
from switchboard_common.config import SwitchboardConfig
from switchboard_common.ids import uuid7
from switchboard_common.pipeline.outbox import Outbox
from switchboard_common.pipeline.topics import USAGE_TOPIC
from switchboard_router.usage_reporter import UsageReporter
from switchboard_usage import service as usage_service
from switchboard_usage.clickhouse import ClickHouse
from switchboard_usage.pricing import PriceBook
from switchboard_usage.service import UsageServicer
from tests.conftest import eventually

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


class CountingServicer(UsageServicer):
    """The real servicer; counts the messages each stream brought."""

    messages = 0

    async def RecordUsage(
        self, request_iterator: AsyncIterator[usage_pb2.RecordUsageRequest], context: Any
    ) -> AsyncIterator[usage_pb2.RecordUsageResponse]:
        async def counted() -> AsyncIterator[usage_pb2.RecordUsageRequest]:
            async for request in request_iterator:
                CountingServicer.messages += 1
                yield request

        async for response in super().RecordUsage(counted(), context):
            yield response


@contextlib.asynccontextmanager
async def _serving(
    tmp_path: Path, kind: type[UsageServicer]
) -> AsyncIterator[tuple[str, Outbox, UsageServicer]]:
    """A real gRPC server with `kind` over a real outbox: its address, the outbox, the servicer."""
    outbox = Outbox(tmp_path / "outbox.db", "usage", USAGE_TOPIC, max_bytes=1 << 30)
    await outbox.open()
    # RecordUsage never reads ClickHouse: an unopened client is enough.
    servicer = kind(outbox, PriceBook(SwitchboardConfig()), ClickHouse("chdb://x"))
    server = grpc.aio.server()
    usage_pb2_grpc.add_UsageLedgerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", outbox, servicer
    finally:
        await server.stop(None)
        await outbox.close()


@pytest_asyncio.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[tuple[str, Outbox]]:
    CountingServicer.messages = 0
    async with _serving(tmp_path, CountingServicer) as (address, outbox, _):
        yield address, outbox


def _message(record: usage_pb2.UsageRecord) -> usage_pb2.RecordUsageRequest:
    return usage_pb2.RecordUsageRequest(records=[usage_pb2.TracedUsageRecord(record=record)])


async def _one_acked(
    channel: grpc.aio.Channel,
) -> tuple[Any, usage_pb2.UsageRecord]:
    """A record stream (10 s deadline) whose first record was sent and acked."""
    call = usage_pb2_grpc.UsageLedgerServiceStub(channel).RecordUsage(timeout=10)
    record = _record()
    await call.write(_message(record))
    response = await call.read()
    assert isinstance(response, usage_pb2.RecordUsageResponse)
    assert [a.event_id for a in response.acks] == [record.event_id]
    return call, record


def _record() -> usage_pb2.UsageRecord:
    return usage_pb2.UsageRecord(event_id=uuid7(), model="m", status=usage_pb2.USAGE_STATUS_OK)


async def test_records_queued_together_share_a_message_and_an_ack(
    ledger: tuple[str, Outbox],
) -> None:
    address, outbox = ledger
    async with grpc.aio.insecure_channel(address) as channel:
        reporter = UsageReporter(usage_pb2_grpc.UsageLedgerServiceStub(channel), max_pending=1000)
        # Queued before the sender first runs: as concurrent calls' records are.
        records = [_record() for _ in range(40)]
        for record in records:
            reporter.submit(record)
        reporter.start()
        try:

            async def drained() -> bool:
                return not reporter.pending

            await eventually(drained)
            stored = {r.event_id for r in await outbox.records()}
            assert stored == {r.event_id for r in records}
            assert CountingServicer.messages == 1
            # Idle: a record alone goes out at once, in a message of its own.
            lone = _record()
            reporter.submit(lone)
            assert await reporter.durable(lone.event_id, 10.0)
            assert CountingServicer.messages == 2
        finally:
            await reporter.close(1.0)


async def test_the_one_record_form_is_acked_record_by_record(
    ledger: tuple[str, Outbox],
) -> None:
    address, outbox = ledger
    record = _record()
    async with grpc.aio.insecure_channel(address) as channel:
        call = usage_pb2_grpc.UsageLedgerServiceStub(channel).RecordUsage()
        duplicates = []
        for _ in range(2):  # the second is a resend
            await call.write(usage_pb2.RecordUsageRequest(record=record))
            response = await call.read()
            assert isinstance(response, usage_pb2.RecordUsageResponse)
            assert response.event_id == record.event_id
            assert not response.acks
            duplicates.append(response.duplicate)
        assert duplicates == [False, True]
        await call.done_writing()
    assert [r.event_id for r in await outbox.records()] == [record.event_id]


async def test_a_stream_whose_messages_cannot_be_read_ends_with_an_error(
    tmp_path: Path,
) -> None:
    """What came before the unreadable message is acked; then the stream ends
    with an error (the router reconnects and resends) instead of staying open
    with nothing more to ack."""

    class Unreadable(UsageServicer):
        async def RecordUsage(
            self, request_iterator: AsyncIterator[usage_pb2.RecordUsageRequest], context: Any
        ) -> AsyncIterator[usage_pb2.RecordUsageResponse]:
            async def second_fails() -> AsyncIterator[usage_pb2.RecordUsageRequest]:
                count = 0
                async for request in request_iterator:
                    count += 1
                    if count == 2:
                        raise ValueError("the message could not be decoded")
                    yield request

            async for response in super().RecordUsage(second_fails(), context):
                yield response

    async with (
        _serving(tmp_path, Unreadable) as (address, outbox, _),
        grpc.aio.insecure_channel(address) as channel,
    ):
        call, first = await _one_acked(channel)
        await call.write(_message(_record()))
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call.read()
        assert failed.value.code() == grpc.StatusCode.UNKNOWN
        assert [r.event_id for r in await outbox.records()] == [first.event_id]


async def test_a_draining_server_ends_open_streams_after_acking(tmp_path: Path) -> None:
    """The server's drain (SIGTERM) ends a record stream at once, and it ends
    cleanly: the router reconnects to another replica and resends anything unacked."""
    async with (
        _serving(tmp_path, UsageServicer) as (address, outbox, servicer),
        grpc.aio.insecure_channel(address) as channel,
    ):
        call, record = await _one_acked(channel)
        servicer.drain()
        assert await call.read() is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
        assert [r.event_id for r in await outbox.records()] == [record.event_id]


@pytest.mark.parametrize("budget_s", [2.0, 0.0])
async def test_a_draining_server_stores_a_backlog_within_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget_s: float
) -> None:
    """What a stream had queued when the drain began is stored and acked
    before it ends, for at most DRAIN_BACKLOG_S; past that, the batch being
    stored is acked and the rest is left for the router to resend."""
    monkeypatch.setattr(usage_service, "DRAIN_BACKLOG_S", budget_s)
    CountingServicer.messages = 0
    async with (
        _serving(tmp_path, CountingServicer) as (address, outbox, servicer),
        grpc.aio.insecure_channel(address) as channel,
    ):
        entered, release = threading.Event(), threading.Event()
        write = outbox._write

        def held(items: list[Any]) -> list[bool]:
            entered.set()
            assert release.wait(10)
            return write(items)

        outbox._group._commit = held
        try:
            call = usage_pb2_grpc.UsageLedgerServiceStub(channel).RecordUsage(timeout=10)
            first = _record()
            await call.write(_message(first))
            await asyncio.to_thread(entered.wait, 10)
            behind = [_record() for _ in range(5)]
            for record in behind:
                await call.write(_message(record))

            async def all_read() -> bool:
                return CountingServicer.messages == 6

            await eventually(all_read)
            servicer.drain()
            release.set()
            acked: list[str] = []
            while (response := await call.read()) is not grpc.aio.EOF:
                assert isinstance(response, usage_pb2.RecordUsageResponse)
                acked += [a.event_id for a in response.acks]
            assert await call.code() == grpc.StatusCode.OK
            kept = [first] + (behind if budget_s else [])
            assert acked == [r.event_id for r in kept]
            assert sorted(r.event_id for r in await outbox.records()) == sorted(
                r.event_id for r in kept
            )
        finally:
            release.set()
