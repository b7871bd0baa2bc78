"""GPU history on its way to Kafka: samples never wait and are dropped oldest
first (and counted) when the broker is away too long; alert events are kept on
disk until the broker acked them, and the alerts firing survive a restart."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from prometheus_client import REGISTRY

from switchboard.gpu.v1 import events_pb2, gpu_pb2
from switchboard_common.gpu_topics import ALERTS_TOPIC, SAMPLES_TOPIC
from switchboard_gpu.alert_store import AlertStore
from switchboard_gpu.publisher import GpuKafkaSettings, HistoryPublisher

pytestmark = pytest.mark.asyncio


def _counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def status(n: int) -> gpu_pb2.NodeStatus:
    s = gpu_pb2.NodeStatus(hostname="node-1", nvml_state=gpu_pb2.NVML_STATE_AVAILABLE)
    s.sample_time.FromSeconds(1_735_689_600 + n)
    return s


def alert_event(alert_id: str, state: gpu_pb2.AlertState.ValueType) -> events_pb2.GpuAlertEvent:
    alert = gpu_pb2.GpuAlert(alert_id=alert_id, rule_name="hot", state=state)
    return events_pb2.GpuAlertEvent(event_id=f"{alert_id}-{state}", alert=alert)


class FakeProducer:
    """Records sends; each send's future fails while `broken` is set."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.broken = False

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.broken:
            future.set_exception(KafkaConnectionError("broker away"))
        else:
            self.sent.append((topic, key, value))
            future.set_result(None)
        return future


class Publisher(HistoryPublisher):
    def __init__(self, store: AlertStore, buffer: int) -> None:
        super().__init__(GpuKafkaSettings("127.0.0.1:1", sample_buffer=buffer), store)
        self.producer = FakeProducer()

    async def _producer_ready(self) -> Any:
        return self.producer


async def test_samples_are_dropped_oldest_first_when_the_buffer_is_full(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "alerts.sqlite")
    await store.open()
    publisher = Publisher(store, buffer=3)
    dropped = _counter("switchboard_gpu_samples_dropped_total")
    try:
        for n in range(5):
            publisher.offer(status(n))
        assert publisher.buffered == 3
        assert _counter("switchboard_gpu_samples_dropped_total") - dropped == 2

        publisher.producer.broken = True
        with pytest.raises(KafkaConnectionError):
            await publisher.publish_once()
        assert publisher.buffered == 3  # kept for the next try

        publisher.producer.broken = False
        assert await publisher.publish_once() == 3
        assert await publisher.publish_once() == 0
    finally:
        await store.close()

    sent = [events_pb2.GpuSampleEvent.FromString(v) for _, _, v in publisher.producer.sent]
    assert [e.status.sample_time.seconds - 1_735_689_600 for e in sent] == [2, 3, 4]
    assert {(topic, key) for topic, key, _ in publisher.producer.sent} == {
        (SAMPLES_TOPIC, b"node-1")
    }
    assert len({e.event_id for e in sent}) == 3


async def test_alert_events_wait_on_disk_until_the_broker_acks(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "alerts.sqlite")
    await store.open()
    publisher = Publisher(store, buffer=10)
    await store.append([alert_event("a1", gpu_pb2.ALERT_STATE_FIRING)])
    publisher.offer(status(0))

    publisher.producer.broken = True
    with pytest.raises(KafkaConnectionError):
        await publisher.publish_once()
    assert store.depth == 1
    await store.close()

    # A restart: the event is still there, and so is the alert firing.
    store = AlertStore(tmp_path / "alerts.sqlite")
    firing = await store.open()
    publisher = Publisher(store, buffer=10)
    try:
        assert [a.alert_id for a in firing] == ["a1"]
        assert store.depth == 1
        assert await publisher.publish_once() == 1
        assert store.depth == 0
    finally:
        await store.close()
    ((topic, key, value),) = publisher.producer.sent
    assert (topic, key) == (ALERTS_TOPIC, b"a1")
    assert events_pb2.GpuAlertEvent.FromString(value).alert.state == gpu_pb2.ALERT_STATE_FIRING


async def test_alerts_publish_before_samples(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "alerts.sqlite")
    await store.open()
    publisher = Publisher(store, buffer=10)
    try:
        publisher.offer(status(0))
        await store.append(
            [
                alert_event("a1", gpu_pb2.ALERT_STATE_FIRING),
                alert_event("a1", gpu_pb2.ALERT_STATE_RESOLVED),
            ]
        )
        assert await publisher.publish_once() == 3
    finally:
        await store.close()
    assert [topic for topic, _, _ in publisher.producer.sent] == [
        ALERTS_TOPIC,
        ALERTS_TOPIC,
        SAMPLES_TOPIC,
    ]


async def test_store_tracks_firing_alerts(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "alerts.sqlite")
    await store.open()
    await store.append(
        [
            alert_event("a1", gpu_pb2.ALERT_STATE_FIRING),
            alert_event("a2", gpu_pb2.ALERT_STATE_FIRING),
        ]
    )
    await store.append([alert_event("a1", gpu_pb2.ALERT_STATE_RESOLVED)])
    await store.close()

    store = AlertStore(tmp_path / "alerts.sqlite")
    try:
        firing = await store.open()
        events = await store.oldest(10)
    finally:
        await store.close()
    assert [a.alert_id for a in firing] == ["a2"]
    assert [(e.alert_id, e.seq) for e in events] == [("a1", 1), ("a2", 2), ("a1", 3)]


async def test_store_cap_deletes_the_oldest_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = AlertStore(tmp_path / "alerts.sqlite", max_events=2)
    await store.open()
    dropped = _counter("switchboard_gpu_alert_events_dropped_total")
    try:
        with caplog.at_level(logging.ERROR):
            await store.append([alert_event(f"a{n}", gpu_pb2.ALERT_STATE_FIRING) for n in range(3)])
        events = await store.oldest(10)
    finally:
        await store.close()
    assert [e.alert_id for e in events] == ["a1", "a2"]
    assert _counter("switchboard_gpu_alert_events_dropped_total") - dropped == 1
    assert any("alert store full" in r.getMessage() for r in caplog.records)
