"""The usage sink forgets the event ids it remembers whenever its partitions
may have changed hands: another sink may have stored their records meanwhile,
and a record the memory wrongly holds would be dropped as a duplicate. A real
broker; the sink's memory is made stale on purpose, holding a record that
ClickHouse does not, and the record must still be stored."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from switchboard.usage.v1 import events_pb2, usage_pb2
from switchboard_common.ids import uuid7
from switchboard_common.pipeline.kafka import KafkaSettings
from switchboard_common.pipeline.topics import USAGE_TOPIC
from switchboard_usage.clickhouse import ClickHouse
from switchboard_usage.recent_ids import window_floor
from switchboard_usage.sink import Sink
from tests.conftest import eventually
from tests.support.broker import tansu_broker

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


class StaleAfterStart(Sink):
    """Its memory goes stale once its consumer has started: only the consumer
    group's assignment (the rebalance listener) can tell it to forget."""

    stale: str = ""

    async def _start(self) -> AIOKafkaConsumer:
        consumer = await super()._start()
        self.recent.load([self.stale], window_floor(), self.recent.generation)
        return consumer


@pytest.mark.parametrize("assign_all", [False, True], ids=["consumer group", "every partition"])
async def test_a_record_the_memory_wrongly_holds_is_stored_all_the_same(
    clickhouse: ClickHouse, assign_all: bool
) -> None:
    event_id = uuid7()
    event = events_pb2.UsageEvent(record=usage_pb2.UsageRecord(event_id=event_id))
    with tansu_broker() as bootstrap:
        settings = KafkaSettings(bootstrap)
        if assign_all:
            # Stale before its consumer starts: the start must forget it.
            sink: Sink = Sink(clickhouse, settings, assign_all=True)
            sink.recent.load([event_id], window_floor(), sink.recent.generation)
        else:
            sink = StaleAfterStart(clickhouse, settings)
            sink.stale = event_id
        running = asyncio.create_task(sink.run())
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                USAGE_TOPIC, event.SerializeToString(), key=event_id.encode()
            )

            async def stored() -> bool:
                rows = await clickhouse.rows(
                    "SELECT count() FROM usage_events WHERE event_id = {id:String}",
                    {"id": event_id},
                )
                return rows == [(1,)]

            await eventually(stored, timeout=30, interval=0.2, what="the record stored")
        finally:
            await producer.stop()
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            await sink.close()


async def _run_until_stored(sink: Sink, clickhouse: ClickHouse, event_id: str) -> None:
    running = asyncio.create_task(sink.run())
    try:

        async def stored() -> bool:
            rows = await clickhouse.rows(
                "SELECT count() FROM usage_events WHERE event_id = {id:String}", {"id": event_id}
            )
            return rows == [(1,)]

        await eventually(stored, timeout=30, interval=0.2, what="the record stored")
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await sink.close()


async def test_a_replay_in_a_consumer_group_reads_the_topic_again(clickhouse: ClickHouse) -> None:
    event_id = uuid7()
    event = events_pb2.UsageEvent(record=usage_pb2.UsageRecord(event_id=event_id))
    with tansu_broker() as bootstrap:
        settings = KafkaSettings(bootstrap)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                USAGE_TOPIC, event.SerializeToString(), key=event_id.encode()
            )
        finally:
            await producer.stop()
        # Stored, and its offset committed under the group.
        await _run_until_stored(Sink(clickhouse, settings), clickhouse, event_id)
        # A ClickHouse that lost its rows; an operator's replay brings them back.
        await clickhouse.command("TRUNCATE TABLE usage_events")
        await _run_until_stored(Sink(clickhouse, settings, replay=True), clickhouse, event_id)
