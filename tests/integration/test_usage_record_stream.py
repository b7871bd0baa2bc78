"""The router → usage hop over a real gRPC server and a real outbox: records
queued together travel in one message and are acked in one, each is durable
when acked, a resend is a duplicate, and the one-record form of a router from
before batching is still acked record by record."""

from __future__ import annotations

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


@pytest_asyncio.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[tuple[str, Outbox]]:
    outbox = Outbox(tmp_path / "outbox.db", "usage", USAGE_TOPIC, max_bytes=1 << 30)
    await outbox.open()
    CountingServicer.messages = 0
    # RecordUsage never reads ClickHouse: an unopened client is enough.
    servicer = CountingServicer(outbox, PriceBook(SwitchboardConfig()), ClickHouse("chdb://x"))
    server = grpc.aio.server()
    usage_pb2_grpc.add_UsageLedgerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", outbox
    finally:
        await server.stop(None)
        await outbox.close()


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
