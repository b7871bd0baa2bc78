"""GPU history on its way to Kafka: samples never wait and are dropped oldest
first (and counted) when the broker is away too long; alert events are kept on
disk until the broker acked them, and the alerts firing survive a restart."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from prometheus_client import REGISTRY

from switchboard.gpu.v1 import events_pb2, gpu_pb2
from switchboard_common.pipeline.kafka import KafkaSettings, Producer
from switchboard_common.pipeline.topics import ALERTS_TOPIC, SAMPLES_TOPIC
from switchboard_gpu.alert_store import AlertStore
from switchboard_gpu.publisher import HistoryPublisher, PublisherSettings

pytestmark = pytest.mark.asyncio


def _counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def _counter_labelled(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


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
        # Each sent message's Kafka headers (the relay's traceparent, when traced).
        self.headers: list[list[tuple[str, bytes]] | None] = []
        self.broken = False

    async def send(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.broken:
            future.set_exception(KafkaConnectionError("broker away"))
        else:
            self.sent.append((topic, key, value))
            self.headers.append(headers)
            future.set_result(None)
        return future


class FakeProducerHolder(Producer):
    def __init__(self, producer: FakeProducer) -> None:
        super().__init__(KafkaSettings("127.0.0.1:1"))
        self.fake = producer

    async def ready(self) -> Any:
        return self.fake


class Publisher(HistoryPublisher):
    def __init__(self, store: AlertStore, buffer: int) -> None:
        settings = PublisherSettings(KafkaSettings("127.0.0.1:1"), sample_buffer=buffer)
        super().__init__(settings, store)
        self.producer = FakeProducer()
        self.relay.producer = FakeProducerHolder(self.producer)


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


async def test_alert_events_wait_on_disk_until_confirmed_stored(tmp_path: Path) -> None:
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
        # Acked, yet kept until the gpu sink confirms it stored.
        assert (store.depth, store.outbox.pending) == (1, 0)
        await store.outbox.confirm(["a1-1"])
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
        events = await store.outbox.records()
    finally:
        await store.close()
    assert [a.alert_id for a in firing] == ["a2"]
    assert [(e.key, e.seq) for e in events] == [(b"a1", 1), (b"a2", 2), (b"a1", 3)]


async def test_store_cap_deletes_the_oldest_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = [alert_event(f"a{n}", gpu_pb2.ALERT_STATE_FIRING) for n in range(3)]
    size = len(events[0].SerializeToString())
    store = AlertStore(tmp_path / "alerts.sqlite", max_bytes=2 * size)
    await store.open()
    dropped = _counter_labelled("switchboard_outbox_dropped_total", outbox="gpu_alerts")
    try:
        with caplog.at_level(logging.ERROR):
            await store.append(events)
        stored = await store.outbox.records()
    finally:
        await store.close()
    assert [e.key for e in stored] == [b"a1", b"a2"]
    assert _counter_labelled("switchboard_outbox_dropped_total", outbox="gpu_alerts") - dropped == 1
    assert any("outbox full" in r.getMessage() for r in caplog.records)


async def test_a_store_from_before_the_shared_outbox_keeps_its_events(tmp_path: Path) -> None:
    path = tmp_path / "alerts.sqlite"
    legacy = sqlite3.connect(path)
    legacy.execute(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
        "alert_id TEXT NOT NULL, payload BLOB NOT NULL)"
    )
    event = alert_event("old", gpu_pb2.ALERT_STATE_FIRING)
    legacy.execute(
        "INSERT INTO outbox (alert_id, payload) VALUES (?, ?)", ("old", event.SerializeToString())
    )
    legacy.commit()
    legacy.close()
    store = AlertStore(path)
    await store.open()
    try:
        (record,) = await store.outbox.unpublished(10)
    finally:
        await store.close()
    assert (record.event_id, record.key) == (event.event_id, b"old")
