"""Usage events: Kafka → ClickHouse (usage_events), exactly once in effect,
on the shared sink loop (switchboard_common.pipeline.sink).

Per polled batch: check each message decodes, drop event ids ClickHouse
already holds (known from memory for the ids stored lately, recent_ids.py;
looked up for older ones) and repeats inside the batch, insert the rest with a
deterministic insert_deduplication_token (the payloads as they came, decoded
by ClickHouse: FORMAT ProtobufList),
confirm the batch's event ids (the usage outbox lets them go), and only then
commit the offset. A message that cannot be decoded goes to the dead-letter
topic with its error and never stalls its partition.
"""

from __future__ import annotations

import bisect
import logging
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from prometheus_client import Counter

from switchboard.usage.v1 import events_pb2, usage_pb2
from switchboard_common.logs import log_fields
from switchboard_common.pipeline import sink as pipeline_sink
from switchboard_common.pipeline.kafka import KafkaSettings
from switchboard_common.pipeline.topics import DLQ_TOPIC, USAGE_TOPIC
from switchboard_usage.clickhouse import ClickHouse, Decoded, quote
from switchboard_usage.recent_ids import GRACE_S, RecentIds, window_floor

log = logging.getLogger(__name__)

INSERTED = Counter("switchboard_usage_sink_inserted_total", "Usage rows inserted into ClickHouse.")
SKIPPED = Counter("switchboard_usage_sink_duplicates_total", "Usage events already stored.")
DEAD = Counter("switchboard_usage_sink_dead_letters_total", "Undecodable usage messages.")
SINK_GROUP = "switchboard-usage-sink"
# The sink's queries run on one thread each. A batch is small (ten inserts a
# second under load), so more threads would not finish it much sooner. They
# would take both cores of a small node from the services for the insert's
# few milliseconds, and the requests in flight would wait for them.
ONE_THREAD = {"max_threads": "1", "max_insert_threads": "1"}
# The event ids already stored in a batch's range (store() filters them out).
STORED_IN_RANGE = (
    "SELECT event_id FROM usage_events WHERE event_id BETWEEN {low:String} AND {high:String}"
)
# The newest stored ids above a cutoff, for RecentIds.load.
STORED_ABOVE = (
    "SELECT event_id FROM usage_events WHERE event_id > {low:String} "
    "ORDER BY event_id DESC LIMIT {limit:UInt32}"
)
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

COLUMNS = (
    "event_id", "request_id", "attempt", "key_name", "requested_model", "model",
    "deployment_id", "provider", "upstream_model", "operation", "stream", "prompt_tokens",
    "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens", "estimated",
    "status", "error_reason", "provider_request_id", "latency_ms", "ttft_ms", "start_time",
    "end_time", "config_version", "router_instance", "sequence", "input_cost_nanos",
    "output_cost_nanos", "total_cost_nanos", "currency", "kafka_partition", "kafka_offset",
    "surface", "cache_write_tokens", "audio_seconds", "characters", "search_units", "images",
    "cached",
)  # fmt: skip

# ClickHouse decodes the payloads itself (FORMAT ProtobufList, the schema in
# formats/usage_row.proto): ~1 µs of Python per event to frame it, where
# building a row of Python values and clickhouse-connect serializing it cost
# ~18 µs. The input's columns, as ClickHouse names a nested message's fields
# (record.event_id → record_event_id), with the types of the stored columns.
_INPUT = {
    "record_event_id": "String", "record_request_id": "String", "record_attempt": "UInt32",
    "record_key_name": "String", "record_requested_model": "String", "record_model": "String",
    "record_deployment_id": "String", "record_provider": "String",
    "record_upstream_model": "String", "record_operation": "Int32", "record_stream": "Bool",
    "record_prompt_tokens": "UInt32", "record_completion_tokens": "UInt32",
    "record_total_tokens": "UInt32", "record_cached_tokens": "UInt32",
    "record_reasoning_tokens": "UInt32", "record_estimated": "Bool", "record_status": "Int32",
    "record_error_reason": "String", "record_provider_request_id": "String",
    "record_latency_ms": "Float64", "record_ttft_ms": "Float64",
    "record_start_time_seconds": "Int64", "record_start_time_nanos": "Int32",
    "record_end_time_seconds": "Int64", "record_end_time_nanos": "Int32",
    "record_config_version": "UInt64", "record_router_instance": "String",
    "record_sequence": "UInt64", "input_cost_nanos": "Int64", "output_cost_nanos": "Int64",
    "total_cost_nanos": "Int64", "currency": "String", "kafka_partition": "Int32",
    "kafka_offset": "Int64", "record_surface": "String", "record_cache_write_tokens": "UInt32",
    "record_audio_seconds": "Float64", "record_characters": "UInt32",
    "record_search_units": "UInt32", "record_images": "UInt32", "record_cached": "Bool",
}  # fmt: skip
FORMAT = Decoded(
    format="ProtobufList",
    schema=Path(__file__).parent / "formats" / "usage_row.proto",
    message="Row",
    structure=", ".join(f"{name} {kind}" for name, kind in _INPUT.items()),
)
# Enum names as the rows store them ("chat", "ok"); a number this build does
# not know stores '' instead of failing the batch.
OPERATIONS: dict[int, str] = {
    v: k.removeprefix("OPERATION_").lower() for k, v in usage_pb2.Operation.items()
}
STATUSES: dict[int, str] = {
    v: k.removeprefix("USAGE_STATUS_").lower() for k, v in usage_pb2.UsageStatus.items()
}


def _named(column: str, names: Mapping[int, str]) -> str:
    numbers = ", ".join(str(number) for number in names)
    texts = ", ".join(quote(name) for name in names.values())
    return f"transform({column}, [{numbers}], [{texts}], '')"


def _time(prefix: str) -> str:
    # Milliseconds, truncated: DateTime64(3).
    return (
        f"fromUnixTimestamp64Milli({prefix}_seconds * 1000 "
        f"+ intDiv({prefix}_nanos, 1000000), 'UTC')"
    )


_DERIVED = {
    "operation": _named("record_operation", OPERATIONS),
    "status": _named("record_status", STATUSES),
    "start_time": _time("record_start_time"),
    "end_time": _time("record_end_time"),
}
SELECT = ", ".join(_DERIVED.get(c) or (c if c in _INPUT else f"record_{c}") for c in COLUMNS)


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Row's appended fields: tag (field number << 3 | wire type: 5 is 32-bit,
# 1 is 64-bit), then the value little-endian.
_PARTITION_TAG = _varint(1000 << 3 | 5)
_OFFSET_TAG = _varint(1001 << 3 | 1)
_PARTITION = struct.Struct("<i").pack
_OFFSET = struct.Struct("<q").pack
_APPENDED = len(_PARTITION_TAG) + 4 + len(_OFFSET_TAG) + 8


def encode(messages: Iterable[tuple[bytes, int, int]]) -> bytes:
    """One ProtobufList envelope of (UsageEvent payload, partition, offset)
    rows: each payload as it came, its partition and offset appended (fields
    appended to a serialized message are fields of it), each row
    length-prefixed as a repeated field of the envelope, the envelope itself
    length-prefixed."""
    heads: dict[int, bytes] = {}
    parts: list[bytes] = []
    extend = parts.extend
    for payload, partition, offset in messages:
        head = heads.get(partition)
        if head is None:
            head = heads[partition] = _PARTITION_TAG + _PARTITION(partition) + _OFFSET_TAG
        extend((b"\n", _varint(len(payload) + _APPENDED), payload, head, _OFFSET(offset)))
    body = b"".join(parts)
    return _varint(len(body)) + body


async def insert(
    clickhouse: ClickHouse, messages: Sequence[tuple[bytes, int, int]], token: str
) -> None:
    """Insert (UsageEvent payload, partition, offset) rows into usage_events,
    under an insert_deduplication_token."""
    await clickhouse.insert_decoded(
        "usage_events",
        COLUMNS,
        SELECT,
        FORMAT,
        encode(messages),
        settings={"insert_deduplication_token": token, **ONE_THREAD},
    )


class Sink(pipeline_sink.Sink):
    NAME = "usage"
    TOPICS: tuple[str, ...] = (USAGE_TOPIC,)
    GROUP = SINK_GROUP

    def __init__(
        self,
        clickhouse: ClickHouse,
        settings: KafkaSettings,
        replay: bool = False,
        assign_all: bool = False,
        confirmers: Sequence[pipeline_sink.Confirmer] = (),
    ):
        super().__init__(settings, replay, assign_all, confirmers)
        self.clickhouse = clickhouse
        # The embedded engine's one writer is this sink, and it runs its queries
        # one at a time on one thread: no write it did not see can still be
        # landing when it loads, so it needs no grace after a forget.
        self.recent = RecentIds(grace_s=0.0 if clickhouse.embedded else GRACE_S)

    def partitions_changed(self) -> None:
        # Another sink may have stored these partitions' ids meanwhile.
        self.recent.forget()

    async def _load_recent(self) -> str | None:
        """Load the ids stored lately; the new cutoff, or None if the memory
        was forgotten while the query ran (its answer may be stale)."""
        generation = self.recent.generation
        low = window_floor()
        half = self.recent.limit // 2
        rows = await self.clickhouse.rows(STORED_ABOVE, {"low": low, "limit": half}, ONE_THREAD)
        ids = [event_id for (event_id,) in rows]
        # Cut short by the limit: what is known starts at the oldest id read.
        cutoff = min(ids) if len(ids) == half else low
        return cutoff if self.recent.load(ids, cutoff, generation) else None

    async def _stored(self, everything: Sequence[str]) -> list[str]:
        """Which of these sorted event ids ClickHouse holds: from memory above
        its cutoff, with a query for the rest (all of them while it is not
        loaded)."""
        cutoff = self.recent.cutoff
        if cutoff is None and self.recent.may_load():
            cutoff = await self._load_recent()
        older = len(everything) if cutoff is None else bisect.bisect_right(everything, cutoff)
        stored = [e for e in everything[older:] if e in self.recent]
        if older:
            # Event ids are UUIDv7 (time first) and the table is ordered by
            # them, so one primary-key range covers the batch: ~50x cheaper than
            # an IN list of thousands of literals. It may return neighbours.
            rows = await self.clickhouse.rows(
                STORED_IN_RANGE, {"low": everything[0], "high": everything[older - 1]}, ONE_THREAD
            )
            stored.extend(event_id for (event_id,) in rows)
        return stored

    async def store(self, batches: pipeline_sink.Batches) -> pipeline_sink.Stored:
        """Insert one poll's messages from every partition as one block."""
        # Decoded here only to be checked and for its event id: ClickHouse
        # decodes what is inserted, and must not fail a batch over one bad message.
        decoded: dict[str, tuple[bytes, int, int]] = {}
        for tp, messages in batches.items():
            for message in messages:
                try:
                    event_id = events_pb2.UsageEvent.FromString(message.value).record.event_id
                    if not _UUID.match(event_id):
                        raise ValueError(f"event_id {event_id[:64]!r} is not a UUID")
                except Exception as exc:
                    await self._dead_letter(tp, message, exc)
                    continue
                decoded.setdefault(event_id, (message.value, tp.partition, message.offset))
        if not decoded:
            return pipeline_sink.Stored(0)
        everything = sorted(decoded)
        duplicates = 0
        for event_id in await self._stored(everything):
            if decoded.pop(event_id, None) is not None:
                duplicates += 1
        SKIPPED.inc(duplicates)
        if decoded:
            try:
                await insert(
                    self.clickhouse, list(decoded.values()), pipeline_sink.dedup_token(decoded)
                )
            except BaseException:
                # It may have stored the rows all the same: look them up again.
                self.recent.forget()
                raise
            self.recent.add(decoded)
            INSERTED.inc(len(decoded))
        return pipeline_sink.Stored(len(decoded), {USAGE_TOPIC: everything})

    async def _dead_letter(self, tp: TopicPartition, message: Any, exc: Exception) -> None:
        producer = await self.producer.ready()
        letter = events_pb2.UsageDeadLetter(
            topic=tp.topic,
            partition=tp.partition,
            offset=message.offset,
            key=message.key or b"",
            value=message.value or b"",
            error=f"{type(exc).__name__}: {exc}",
        )
        letter.time.GetCurrentTime()
        await producer.send_and_wait(DLQ_TOPIC, letter.SerializeToString(), key=message.key)
        DEAD.inc()
        log.warning(
            "usage message sent to the dead-letter topic",
            extra=log_fields(partition=tp.partition, offset=message.offset, error=letter.error),
        )
