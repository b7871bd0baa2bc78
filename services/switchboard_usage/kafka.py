"""Kafka settings and topics for the usage pipeline.

Idempotent producing is a setting (on for Apache Kafka; the local Tansu broker
rejects InitProducerId). Correctness never depends on it: the sink
deduplicates by event id."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from switchboard_common.gpu_topics import GPU_TOPICS

log = logging.getLogger(__name__)

USAGE_TOPIC = "switchboard.usage.v1"
DLQ_TOPIC = "switchboard.usage.dlq.v1"
SINK_GROUP = "switchboard-usage-sink"
# The gpu sink (GPU samples and alert events) commits apart from usage, so GPU
# telemetry never holds up, or is held up by, usage accounting.
GPU_SINK_GROUP = "switchboard-gpu-sink"


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str
    idempotence: bool
    partitions: int
    send_timeout_s: float

    @classmethod
    def from_env(cls, bootstrap: str) -> KafkaSettings:
        return cls(
            bootstrap=bootstrap,
            idempotence=os.environ.get("SWITCHBOARD_KAFKA_IDEMPOTENCE", "").lower() == "true",
            partitions=int(os.environ.get("SWITCHBOARD_USAGE_PARTITIONS") or 3),
            send_timeout_s=float(os.environ.get("SWITCHBOARD_KAFKA_SEND_TIMEOUT_S") or 10),
        )

    def producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=self.idempotence,
            request_timeout_ms=int(self.send_timeout_s * 1000),
            linger_ms=2,
        )


async def ensure_topics(settings: KafkaSettings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        for name in (USAGE_TOPIC, DLQ_TOPIC, *GPU_TOPICS):
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(name, num_partitions=settings.partitions, replication_factor=1)]
                )
    finally:
        await admin.close()
