"""The usage sink's store() against the real schema (embedded ClickHouse):
ClickHouse decodes the payloads itself, and every column lands as the row it
stands for; repeats inside a batch and event ids already stored are inserted
once, and confirmed all the same."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from typing import Any

import pytest
from aiokafka import TopicPartition

from switchboard.usage.v1 import events_pb2, usage_pb2
from switchboard_common.ids import uuid7
from switchboard_common.pipeline.kafka import KafkaSettings
from switchboard_common.pipeline.topics import USAGE_TOPIC
from switchboard_usage.clickhouse import ClickHouse
from switchboard_usage.recent_ids import GRACE_S, RecentIds
from switchboard_usage.sink import COLUMNS, Sink, insert

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


@dataclasses.dataclass(frozen=True)
class Message:
    value: bytes
    offset: int
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


def _sink(clickhouse: ClickHouse) -> Sink:
    return Sink(clickhouse, KafkaSettings("127.0.0.1:1"))  # store() only: no broker


def _full_event() -> events_pb2.UsageEvent:
    """Every field set, none to its default."""
    record = usage_pb2.UsageRecord(
        event_id=uuid7(), request_id="req-1", attempt=2, key_name="team-a",
        requested_model="alias", model="gpt", deployment_id="d-1", provider="openai",
        upstream_model="gpt-4o", operation=usage_pb2.OPERATION_TRANSCRIPTION, stream=True,
        prompt_tokens=11, completion_tokens=22, total_tokens=33, cached_tokens=4,
        reasoning_tokens=5, estimated=True, status=usage_pb2.USAGE_STATUS_PARTIAL,
        error_reason="UPSTREAM_BROKE", provider_request_id="chatcmpl-1", latency_ms=12.5,
        ttft_ms=3.25, config_version=2**40, router_instance="router-7", sequence=2**50,
        cache_write_tokens=6, surface="qwen_chat", audio_seconds=61.5, characters=700,
        search_units=3, images=2, cached=True,
    )  # fmt: skip
    record.start_time.FromNanoseconds(1_767_000_000_123_456_789)
    record.end_time.FromNanoseconds(1_767_000_001_999_999_999)
    event = events_pb2.UsageEvent(
        record=record, input_cost_nanos=-7, output_cost_nanos=2**62, total_cost_nanos=9,
        currency="EUR", pricing_version=5,
    )  # fmt: skip
    event.publish_time.GetCurrentTime()
    return event


async def _stored(clickhouse: ClickHouse, event_id: str) -> dict[str, Any]:
    (values,) = await clickhouse.rows(
        f"SELECT {', '.join(COLUMNS)} FROM usage_events WHERE event_id = {{id:String}}",  # noqa: S608
        {"id": event_id},
    )
    return dict(zip(COLUMNS, values, strict=True))


async def test_every_column_lands_as_the_event_says(clickhouse: ClickHouse) -> None:
    event = _full_event()
    r = event.record
    batch = {TopicPartition(USAGE_TOPIC, 2): [Message(event.SerializeToString(), 2**33)]}
    assert (await _sink(clickhouse).store(batch)).rows == 1

    stored = await _stored(clickhouse, r.event_id)
    millis = dt.timedelta(milliseconds=1)
    named = usage_pb2.UsageRecord.DESCRIPTOR.fields_by_name
    costs = ("input_cost_nanos", "output_cost_nanos", "total_cost_nanos", "currency")
    expected = {
        # Proto fields that keep their name.
        **{c: getattr(r, c) for c in COLUMNS if c in named},
        **{c: getattr(event, c) for c in costs},
        # Derived: enum names, times to the millisecond (truncated), where it was read.
        "operation": "transcription",
        "status": "partial",
        "start_time": dt.datetime(2025, 12, 29, 9, 20, 0, 123000),
        "end_time": dt.datetime(2025, 12, 29, 9, 20, 1, 999000),
        "kafka_partition": 2,
        "kafka_offset": 2**33,
    }  # fmt: skip
    assert r.start_time.ToDatetime() - expected["start_time"] < millis
    assert stored == expected


async def test_defaults_and_an_unknown_enum_number(clickhouse: ClickHouse) -> None:
    record = usage_pb2.UsageRecord(event_id=uuid7())
    record.operation = usage_pb2.Operation.ValueType(99)  # a newer producer's value
    event = events_pb2.UsageEvent(record=record)
    batch = {TopicPartition(USAGE_TOPIC, 0): [Message(event.SerializeToString(), 0)]}
    assert (await _sink(clickhouse).store(batch)).rows == 1
    stored = await _stored(clickhouse, record.event_id)
    assert stored["operation"] == ""
    assert stored["status"] == "unspecified"
    assert stored["start_time"] == dt.datetime(1970, 1, 1)
    assert (stored["prompt_tokens"], stored["stream"], stored["currency"]) == (0, False, "")


async def test_repeats_and_stored_ids_are_inserted_once_and_confirmed(
    clickhouse: ClickHouse,
) -> None:
    first, second, third = (_full_event() for _ in range(3))
    sink = _sink(clickhouse)
    p0, p1 = TopicPartition(USAGE_TOPIC, 0), TopicPartition(USAGE_TOPIC, 1)
    stored = await sink.store({p0: [Message(first.SerializeToString(), 0)]})
    assert stored.rows == 1

    # Again (a replay), a repeat in another partition, and two new ones.
    batch = {
        p0: [Message(first.SerializeToString(), 0), Message(second.SerializeToString(), 1)],
        p1: [Message(second.SerializeToString(), 5), Message(third.SerializeToString(), 6)],
    }
    stored = await sink.store(batch)
    assert stored.rows == 2
    ids = sorted(e.record.event_id for e in (first, second, third))
    assert sorted(stored.event_ids[USAGE_TOPIC]) == ids
    rows = await clickhouse.rows(
        "SELECT event_id, kafka_partition, kafka_offset FROM usage_events ORDER BY event_id"
    )
    # The first copy read is the one stored.
    assert rows == sorted(
        [
            (first.record.event_id, 0, 0),
            (second.record.event_id, 0, 1),
            (third.record.event_id, 1, 6),
        ]
    )
    # A whole batch again stores nothing and confirms everything.
    again = await sink.store(batch)
    assert (again.rows, sorted(again.event_ids[USAGE_TOPIC])) == (0, ids)
    assert await clickhouse.rows("SELECT sum(requests) FROM usage_daily") == [(3,)]


def _with_id(event_id: str) -> bytes:
    event = _full_event()
    event.record.event_id = event_id
    return event.SerializeToString()


def _uuid7_hours_ago(hours: int) -> str:
    """A UUIDv7 made `hours` ago: older than the sink's memory reaches back."""
    fresh = uuid7().replace("-", "")
    then = int(fresh[:12], 16) - hours * 3_600_000
    h = f"{then:012x}{fresh[12:]}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Queries:
    """Counts the sink's queries, each passed on to the real ClickHouse."""

    def __init__(self, clickhouse: ClickHouse, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sql: list[str] = []
        real = clickhouse.rows

        async def rows(sql: str, *args: Any, **kwargs: Any) -> Any:
            self.sql.append(sql)
            return await real(sql, *args, **kwargs)

        monkeypatch.setattr(clickhouse, "rows", rows)


async def _daily_requests(clickhouse: ClickHouse) -> int:
    ((requests,),) = await clickhouse.rows("SELECT sum(requests) FROM usage_daily")
    return int(requests)


async def test_a_new_sink_knows_what_another_stored_and_asks_clickhouse_once(
    clickhouse: ClickHouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    p0 = TopicPartition(USAGE_TOPIC, 0)
    a, b, c = uuid7(), uuid7(), uuid7()
    assert (await _sink(clickhouse).store({p0: [Message(_with_id(a), 0)]})).rows == 1

    # A restarted usage service: its sink reads the ids stored lately once, then
    # tells a duplicate from a new record without a query per batch.
    queries = Queries(clickhouse, monkeypatch)
    sink = _sink(clickhouse)
    stored = await sink.store({p0: [Message(_with_id(a), 0), Message(_with_id(b), 1)]})
    assert stored.rows == 1
    assert sorted(stored.event_ids[USAGE_TOPIC]) == sorted([a, b])
    assert (await sink.store({p0: [Message(_with_id(c), 2), Message(_with_id(b), 1)]})).rows == 1
    assert len(queries.sql) == 1
    assert "ORDER BY event_id DESC" in queries.sql[0]
    assert await _daily_requests(clickhouse) == 3


async def test_ids_older_than_its_memory_are_looked_up(
    clickhouse: ClickHouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    p0 = TopicPartition(USAGE_TOPIC, 0)
    old, new = _uuid7_hours_ago(2), uuid7()
    sink = _sink(clickhouse)
    assert (await sink.store({p0: [Message(_with_id(old), 0)]})).rows == 1

    # An operator's replay, or records that waited in an outbox for hours.
    queries = Queries(clickhouse, monkeypatch)
    again = await sink.store({p0: [Message(_with_id(old), 0), Message(_with_id(new), 1)]})
    assert again.rows == 1
    assert [sql for sql in queries.sql if "BETWEEN" in sql]
    assert await _daily_requests(clickhouse) == 2


@pytest.mark.parametrize("lost", [TimeoutError, asyncio.CancelledError])
async def test_an_insert_that_failed_is_looked_up_again(
    clickhouse: ClickHouse, monkeypatch: pytest.MonkeyPatch, lost: type[BaseException]
) -> None:
    p0 = TopicPartition(USAGE_TOPIC, 0)
    a, b = uuid7(), uuid7()
    sink = _sink(clickhouse)
    assert (await sink.store({p0: [Message(_with_id(b), 0)]})).rows == 1  # memory loaded

    # The insert stores its rows, then its answer is lost (a timeout, say).
    real = clickhouse.insert_decoded

    async def stored_then_lost(*args: Any, **kwargs: Any) -> None:
        await real(*args, **kwargs)
        raise lost("the answer was lost")

    monkeypatch.setattr(clickhouse, "insert_decoded", stored_then_lost)
    with pytest.raises(lost):
        await sink.store({p0: [Message(_with_id(a), 1)]})
    monkeypatch.setattr(clickhouse, "insert_decoded", real)

    # Retried with more behind it (another token): a is found stored, not counted twice.
    c = uuid7()
    retry = await sink.store({p0: [Message(_with_id(a), 1), Message(_with_id(c), 2)]})
    assert retry.rows == 1
    assert await _daily_requests(clickhouse) == 3


async def test_a_load_cut_short_by_its_limit_looks_older_ids_up(clickhouse: ClickHouse) -> None:
    p0 = TopicPartition(USAGE_TOPIC, 0)
    ids = sorted(uuid7() for _ in range(4))
    batch = {p0: [Message(_with_id(i), n) for n, i in enumerate(ids)]}
    assert (await _sink(clickhouse).store(batch)).rows == 4

    sink = _sink(clickhouse)
    sink.recent = RecentIds(limit=4)  # a load reads the newest 2
    again = await sink.store({p0: [Message(_with_id(ids[0]), 9)]})
    assert sink.recent.cutoff == ids[2]
    assert again.rows == 0
    assert await _daily_requests(clickhouse) == 4


async def test_a_load_that_a_rebalance_overtook_is_not_trusted(
    clickhouse: ClickHouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    p0 = TopicPartition(USAGE_TOPIC, 0)
    late = uuid7()
    sink = _sink(clickhouse)
    real = clickhouse.rows

    async def rows(sql: str, *args: Any, **kwargs: Any) -> Any:
        answer = await real(sql, *args, **kwargs)
        if "ORDER BY event_id DESC" in sql:
            # After the load read the table: the partition's previous owner
            # stores `late`, then the group hands the partition over.
            await insert(clickhouse, [(_with_id(late), 0, 0)], "previous-owner")
            sink.partitions_changed()
        return answer

    monkeypatch.setattr(clickhouse, "rows", rows)
    stored = await sink.store({p0: [Message(_with_id(late), 0)]})
    assert not sink.recent.loaded
    assert stored.rows == 0
    assert await _daily_requests(clickhouse) == 1


async def test_after_partitions_change_hands_batches_are_looked_up_until_the_grace_ends(
    clickhouse: ClickHouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    p0 = TopicPartition(USAGE_TOPIC, 0)
    now = [0.0]
    sink = _sink(clickhouse)
    # Embedded, it loads again at once (nothing else writes); with a server,
    # the partitions' previous owner may still be writing.
    assert sink.recent.grace_s == 0.0
    sink.recent = RecentIds(clock=lambda: now[0])
    sink.partitions_changed()
    queries = Queries(clickhouse, monkeypatch)
    assert (await sink.store({p0: [Message(_with_id(uuid7()), 0)]})).rows == 1
    assert sink.recent.cutoff is None  # not loaded
    assert len(queries.sql) == 1
    assert "BETWEEN" in queries.sql[0]

    now[0] += GRACE_S
    assert (await sink.store({p0: [Message(_with_id(uuid7()), 1)]})).rows == 1
    assert sink.recent.loaded
    assert len(queries.sql) == 2
    assert "ORDER BY event_id DESC" in queries.sql[1]
