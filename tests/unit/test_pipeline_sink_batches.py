"""How long a sink's batch waits for more after its first message: FLUSH_S for
usage (part of the usage lag), the GPU sink's longer flush_s for samples (fewer
ClickHouse inserts), and FLUSH_S again once an alert transition is in the batch.
Read from the waits the sink asks the consumer for, so no test sleeps."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import TopicPartition

from switchboard_common.env import SettingsError
from switchboard_common.pipeline import sink as pipeline_sink
from switchboard_common.pipeline.kafka import KafkaSettings
from switchboard_common.pipeline.topics import ALERTS_TOPIC, SAMPLES_TOPIC, USAGE_TOPIC
from switchboard_common.settings import Settings
from switchboard_usage.clickhouse import ClickHouse
from switchboard_usage.gpu_sink import GpuSink
from switchboard_usage.settings import DEFAULT_GPU_SINK_FLUSH_S, UsageSettings
from switchboard_usage.sink import Sink as UsageSink

FLUSH_MS = pipeline_sink.FLUSH_S * 1000


class _Seen(Exception):
    """Ends a collect once the waits to check have been asked for."""


class Consumer:
    """Hands out one poll's messages per getmany call, recording the wait each
    call asked for; past the last poll it raises _Seen."""

    def __init__(self, polls: list[dict[TopicPartition, list[Any]]]) -> None:
        self.polls = polls
        self.waits: list[int] = []

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        self.waits.append(timeout_ms)
        if not self.polls:
            raise _Seen
        return self.polls.pop(0)


def _poll(topic: str) -> dict[TopicPartition, list[Any]]:
    return {TopicPartition(topic, 0): [object()]}


async def _waits(sink: pipeline_sink.Sink, *topics: str) -> list[int]:
    consumer = Consumer([_poll(topic) for topic in topics])
    with pytest.raises(_Seen):
        await sink._collect(consumer)
    return consumer.waits


def _gpu_sink(flush_s: float = DEFAULT_GPU_SINK_FLUSH_S) -> GpuSink:
    return GpuSink(None, KafkaSettings("127.0.0.1:1"), flush_s=flush_s)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_usage_batch_waits_flush_s_after_its_first_record() -> None:
    # Never opened: the batch's waits alone.
    sink = UsageSink(ClickHouse("chdb://unused"), KafkaSettings("127.0.0.1:1"))
    first, then = await _waits(sink, USAGE_TOPIC)
    assert first == pipeline_sink.POLL_MS
    assert 0 < then <= FLUSH_MS


@pytest.mark.asyncio
async def test_gpu_samples_wait_for_company() -> None:
    _, then = await _waits(_gpu_sink(), SAMPLES_TOPIC)
    assert FLUSH_MS < then <= DEFAULT_GPU_SINK_FLUSH_S * 1000


@pytest.mark.asyncio
async def test_an_alert_transition_flushes_its_batch_at_once() -> None:
    # A sample opened the batch; the alert that joined it cuts the wait short.
    _, after_sample, after_alert = await _waits(_gpu_sink(), SAMPLES_TOPIC, ALERTS_TOPIC)
    assert after_sample > FLUSH_MS
    assert after_alert <= FLUSH_MS
    # An alert on its own, likewise.
    _, then = await _waits(_gpu_sink(), ALERTS_TOPIC)
    assert 0 < then <= FLUSH_MS


def test_the_gpu_sink_lets_the_broker_hold_its_fetches_longer() -> None:
    assert GpuSink.FETCH_WAIT_MS > UsageSink.FETCH_WAIT_MS == pipeline_sink.FETCH_WAIT_MS


def test_the_gpu_flush_is_a_setting() -> None:
    common = Settings.from_env()
    assert UsageSettings.from_env(common, {}).gpu_sink_flush_s == DEFAULT_GPU_SINK_FLUSH_S
    settings = UsageSettings.from_env(common, {"SWITCHBOARD_GPU_SINK_FLUSH_S": "0.5"})
    assert settings.gpu_sink_flush_s == 0.5
    for bad in ("0", "61", "soon"):
        with pytest.raises(SettingsError, match="SWITCHBOARD_GPU_SINK_FLUSH_S"):
            UsageSettings.from_env(common, {"SWITCHBOARD_GPU_SINK_FLUSH_S": bad})
