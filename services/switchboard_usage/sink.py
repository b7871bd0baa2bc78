"""Usage events: Kafka → ClickHouse (usage_events), exactly once in effect,
on the shared sink loop (switchboard_common.pipeline.sink).

Per polled batch: decode, drop event ids ClickHouse already holds (and repeats
inside the batch), insert with a deterministic insert_deduplication_token,
confirm the batch's event ids (the usage outbox lets them go), and only then
commit the offset. A message that cannot be decoded goes to the dead-letter
topic with its error and never stalls its partition.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from typing import Any

from aiokafka import TopicPartition
from google.protobuf import timestamp_pb2
from prometheus_client import Counter

from switchboard.usage.v1 import events_pb2, usage_pb2
from switchboard_common.logs import log_fields
from switchboard_common.pipeline import sink as pipeline_sink
from switchboard_common.pipeline.kafka import KafkaSettings
from switchboard_common.pipeline.topics import DLQ_TOPIC, USAGE_TOPIC
from switchboard_usage.clickhouse import ClickHouse

log = logging.getLogger(__name__)

INSERTED = Counter("switchboard_usage_sink_inserted_total", "Usage rows inserted into ClickHouse.")
SKIPPED = Counter("switchboard_usage_sink_duplicates_total", "Usage events already stored.")
DEAD = Counter("switchboard_usage_sink_dead_letters_total", "Undecodable usage messages.")
SINK_GROUP = "switchboard-usage-sink"
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


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# Enum names, looked up once: this runs for every event.
_OPERATIONS = {v: k.removeprefix("OPERATION_").lower() for k, v in usage_pb2.Operation.items()}
_STATUSES = {v: k.removeprefix("USAGE_STATUS_").lower() for k, v in usage_pb2.UsageStatus.items()}


def ts_datetime(ts: timestamp_pb2.Timestamp) -> dt.datetime:
    # Timestamp.ToDatetime is several times slower than this arithmetic.
    return _EPOCH + dt.timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


def row(event: events_pb2.UsageEvent, partition: int, offset: int) -> list[Any]:
    r = event.record
    return [
        r.event_id, r.request_id, r.attempt, r.key_name, r.requested_model, r.model,
        r.deployment_id, r.provider, r.upstream_model, _OPERATIONS.get(r.operation, ""),
        r.stream, r.prompt_tokens, r.completion_tokens, r.total_tokens, r.cached_tokens,
        r.reasoning_tokens, r.estimated, _STATUSES.get(r.status, ""), r.error_reason,
        r.provider_request_id, r.latency_ms, r.ttft_ms, ts_datetime(r.start_time),
        ts_datetime(r.end_time), r.config_version, r.router_instance, r.sequence,
        event.input_cost_nanos, event.output_cost_nanos, event.total_cost_nanos, event.currency,
        partition, offset, r.surface, r.cache_write_tokens, r.audio_seconds, r.characters,
        r.search_units, r.images, r.cached,
    ]  # fmt: skip


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

    async def store(self, batches: pipeline_sink.Batches) -> pipeline_sink.Stored:
        """Insert one poll's messages from every partition as one block."""
        decoded: dict[str, tuple[events_pb2.UsageEvent, int, int]] = {}
        for tp, messages in batches.items():
            for message in messages:
                try:
                    event = events_pb2.UsageEvent.FromString(message.value)
                    if not _UUID.match(event.record.event_id):
                        raise ValueError(f"event_id {event.record.event_id[:64]!r} is not a UUID")
                except Exception as exc:
                    await self._dead_letter(tp, message, exc)
                    continue
                decoded.setdefault(event.record.event_id, (event, tp.partition, message.offset))
        if not decoded:
            return pipeline_sink.Stored(0)
        everything = sorted(decoded)
        # Event ids are UUIDv7 (time first) and the table is ordered by them, so
        # one primary-key range covers the batch: ~50x cheaper than an IN list
        # of thousands of literals. It may return neighbours; the set sorts that.
        stored = await self.clickhouse.rows(
            "SELECT event_id FROM usage_events "
            "WHERE event_id BETWEEN {low:String} AND {high:String}",
            {"low": everything[0], "high": everything[-1]},
        )
        duplicates = 0
        for (event_id,) in stored:
            if decoded.pop(event_id, None) is not None:
                duplicates += 1
        SKIPPED.inc(duplicates)
        if decoded:
            await self.clickhouse.insert(
                "usage_events",
                [row(event, partition, offset) for event, partition, offset in decoded.values()],
                COLUMNS,
                settings={"insert_deduplication_token": pipeline_sink.dedup_token(decoded)},
            )
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
