"""GetSpend's arithmetic against the real schema (embedded ClickHouse): what
ClickHouse holds plus what the outbox holds that ClickHouse does not yet. A
record kept in the outbox after it was stored (published, not yet confirmed)
counts once."""

from __future__ import annotations

import dataclasses

import pytest
from aiokafka import TopicPartition

from switchboard.usage.v1 import events_pb2, usage_pb2
from switchboard_common.ids import uuid7
from switchboard_common.pipeline.kafka import KafkaSettings
from switchboard_common.pipeline.topics import USAGE_TOPIC
from switchboard_usage import queries
from switchboard_usage.clickhouse import ClickHouse
from switchboard_usage.sink import Sink

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]
NANOS = 1_000_000_000


@dataclasses.dataclass(frozen=True)
class Message:
    value: bytes
    offset: int
    key: bytes | None = None


def event(key_name: str, cost_nanos: int) -> bytes:
    record = usage_pb2.UsageRecord(
        event_id=uuid7(), key_name=key_name, model="m", status=usage_pb2.USAGE_STATUS_OK
    )
    record.start_time.GetCurrentTime()
    record.end_time.GetCurrentTime()
    priced = events_pb2.UsageEvent(record=record, total_cost_nanos=cost_nanos, currency="USD")
    return priced.SerializeToString()


async def test_spend_counts_what_is_in_flight_once(clickhouse: ClickHouse) -> None:
    stored, stored_unconfirmed, in_flight, other_key = (
        event("k", 1 * NANOS),
        event("k", 2 * NANOS),
        event("k", 4 * NANOS),
        event("other", 8 * NANOS),
    )
    sink = Sink(clickhouse, KafkaSettings("127.0.0.1:1"))  # store() only: no broker
    batch = [Message(stored, 0), Message(stored_unconfirmed, 1)]
    assert (await sink.store({TopicPartition(USAGE_TOPIC, 0): batch})).rows == 2

    request = usage_pb2.GetSpendRequest(key_name="k")
    # The outbox still holds one stored record (its confirmation is on its way),
    # one not yet stored, and another key's.
    cost, currency, pending = await queries.spend(
        clickhouse, request, [stored_unconfirmed, in_flight, other_key]
    )
    assert (cost, currency, pending) == (3.0, "USD", 4.0)
    assert await queries.spend(clickhouse, request) == (3.0, "USD", 0.0)
