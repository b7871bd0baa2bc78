"""Broker settings and the producer every relay and sink shares.

Idempotent producing is a setting (on for Apache Kafka; the local Tansu broker
rejects InitProducerId). Correctness never depends on it: sinks deduplicate by
event id, and outboxes republish whatever is not confirmed stored."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from switchboard_common import env as values
from switchboard_common.env import SettingsError
from switchboard_common.pipeline.topics import TOPICS, TopicSpec

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str
    idempotence: bool = False
    send_timeout_s: float = 10.0
    # Partition-count overrides by variable name (TopicSpec.partitions_env).
    env: Mapping[str, str] | None = None

    @classmethod
    def from_env(cls, bootstrap: str, env: Mapping[str, str]) -> KafkaSettings:
        """From a service's settings (read once at its start)."""
        for spec in TOPICS:
            if spec.partitions_env:
                values.integer(env, spec.partitions_env, spec.partitions, minimum=1)
        idempotence = values.text(env, "SWITCHBOARD_KAFKA_IDEMPOTENCE", "false").lower()
        if idempotence not in ("true", "false"):
            raise SettingsError(
                f"SWITCHBOARD_KAFKA_IDEMPOTENCE must be true or false, got {idempotence!r}"
            )
        return cls(
            bootstrap=bootstrap,
            idempotence=idempotence == "true",
            send_timeout_s=values.number(env, "SWITCHBOARD_KAFKA_SEND_TIMEOUT_S", 10.0, above=0),
            env={k: v for k, v in env.items() if k.endswith("_PARTITIONS")},
        )

    def partitions(self, spec: TopicSpec) -> int:
        return spec.partitions_from(self.env or {})

    def producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=self.idempotence,
            request_timeout_ms=int(self.send_timeout_s * 1000),
            linger_ms=2,
        )


async def ensure_topics(settings: KafkaSettings, specs: Sequence[TopicSpec] = TOPICS) -> None:
    """Create the topics the broker lacks, with one replica (the local broker;
    in a cluster the manifests rendered from topics.py create them first)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        missing = [s for s in specs if s.name not in set(await admin.list_topics())]
        for spec in missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(spec.name, settings.partitions(spec), replication_factor=1)]
                )
    finally:
        await admin.close()


async def bounded(awaitable: Awaitable[T], timeout_s: float) -> T:
    """Like asyncio.wait_for, but a timeout does not wait for the cancelled
    work to finish: aiokafka's clients can hang in their own clean-up (closing
    connections to a broker that just died) and would hold the caller with
    them. The abandoned work ends in the background."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        # Whatever it ends with is of no interest any more: retrieve it so
        # asyncio does not report it as never retrieved.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        raise TimeoutError(f"no answer from the broker within {timeout_s} s")
    return task.result()


async def start_consumer(
    settings: KafkaSettings, topics: Sequence[str], assign_all: bool, **options: Any
) -> AIOKafkaConsumer:
    """A started consumer; with assign_all, assigned every partition of `topics`
    (otherwise the caller subscribes). The topics are ensured first: a broker
    that came back empty has none, and nothing can be assigned of a topic that
    does not exist."""
    specs = [spec for spec in TOPICS if spec.name in topics]
    await bounded(ensure_topics(settings, specs), settings.send_timeout_s)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, **options)
    try:
        await bounded(consumer.start(), settings.send_timeout_s)
        if assign_all:
            assigned = []
            for topic in topics:
                partitions = consumer.partitions_for_topic(topic) or set()
                if not partitions:
                    raise KafkaConnectionError(f"no partitions known for {topic} yet")
                assigned += [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(assigned)
    except BaseException:
        await stop_quietly(consumer)
        raise
    return consumer


class Backoff:
    """Exponential backoff between the retries of a loop on the broker."""

    def __init__(self, first_s: float = 0.2, most_s: float = 5.0) -> None:
        self.first_s = first_s
        self.most_s = most_s
        self.next_s = first_s

    def reset(self) -> None:
        self.next_s = self.first_s

    async def sleep(self) -> None:
        await asyncio.sleep(self.next_s)
        self.next_s = min(self.next_s * 2, self.most_s)


def cancelled_from_inside() -> bool:
    """True when a CancelledError reached this task though nobody cancelled
    it: aiokafka cancels the futures of sends and fetches whose connection it
    closes (a broker that died). That is a broker failure, to retry, not an
    order to stop."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0


async def stop_quietly(client: Any, timeout_s: float = 5.0) -> None:
    """Stop a producer or consumer that may already be broken."""
    if client is None:
        return
    try:
        await bounded(client.stop(), timeout_s)
    except asyncio.CancelledError:
        if not cancelled_from_inside():
            raise
    except Exception:
        log.debug("stopping a broken broker client failed", exc_info=True)


class Producer:
    """One producer, started on first use and after every failure. Each start
    first ensures the topics: a broker that came back empty (the local one keeps
    messages in memory) has none, and a sink cannot assign partitions of a topic
    that does not exist."""

    def __init__(self, settings: KafkaSettings, specs: Sequence[TopicSpec] = TOPICS) -> None:
        self.settings = settings
        self.specs = specs
        self._producer: AIOKafkaProducer | None = None

    async def ready(self) -> AIOKafkaProducer:
        if self._producer is None:
            timeout = self.settings.send_timeout_s
            await bounded(ensure_topics(self.settings, self.specs), timeout)
            producer = self.settings.producer()
            try:
                await bounded(producer.start(), timeout)
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def reset(self) -> None:
        producer, self._producer = self._producer, None
        await stop_quietly(producer, 2.0)
