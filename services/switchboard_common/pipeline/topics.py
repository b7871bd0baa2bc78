"""Every Kafka topic of the suite, declared once. The services create what is
missing (ensure_topics, one replica: the local broker), and the Strimzi
KafkaTopic manifests in k8s/ are rendered from here
(`python -m switchboard_common.pipeline.topics > k8s/components/kafka-strimzi/topics.yaml`;
a unit test checks the committed file matches).

A new payload version gets a new topic."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DAY_MS = 86_400_000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    # What it carries and how it is keyed (the manifest's comment).
    about: str
    retention_ms: int
    retention_why: str
    partitions: int = 3
    # The environment variable that overrides `partitions` where a service creates it.
    partitions_env: str = ""

    def partitions_from(self, env: Mapping[str, str]) -> int:
        if self.partitions_env and env.get(self.partitions_env):
            return int(env[self.partitions_env])
        return self.partitions

    @property
    def resource_name(self) -> str:
        return self.name.replace(".", "-")


USAGE = TopicSpec(
    "switchboard.usage.v1",
    "UsageEvent (protos/switchboard/usage/v1/events.proto), keyed by event id",
    7 * DAY_MS,
    "the window a ClickHouse re-ingest (SWITCHBOARD_SINK_REPLAY) can reach",
    partitions_env="SWITCHBOARD_USAGE_PARTITIONS",
)
USAGE_DLQ = TopicSpec(
    "switchboard.usage.dlq.v1",
    "UsageDeadLetter: usage messages the sink could not decode, with the error",
    30 * DAY_MS,
    "to inspect what could not be decoded",
)
GPU_SAMPLES = TopicSpec(
    "switchboard.gpu.samples.v1",
    "GpuSampleEvent (protos/switchboard/gpu/v1/events.proto), keyed by hostname, "
    "so one node's samples stay in order",
    1 * DAY_MS,
    "telemetry: the gpu sink stores it within seconds",
    partitions_env="SWITCHBOARD_GPU_PARTITIONS",
)
GPU_ALERTS = TopicSpec(
    "switchboard.gpu.alerts.v1",
    "GpuAlertEvent, keyed by alert_id, so an alert's resolution follows its firing",
    7 * DAY_MS,
    "alert events stay in the gpu service's outbox until stored anyway",
    partitions_env="SWITCHBOARD_GPU_PARTITIONS",
)
CONFIRMATIONS = TopicSpec(
    "switchboard.pipeline.confirmations.v1",
    "event ids a sink stored, keyed by the topic they came from (one id a line), "
    "for producers in another process than their sink (the gpu service's alert outbox)",
    1 * DAY_MS,
    "a lost confirmation only costs a republish, which the sink deduplicates",
    partitions=1,
)
TOPICS: tuple[TopicSpec, ...] = (USAGE, USAGE_DLQ, GPU_SAMPLES, GPU_ALERTS, CONFIRMATIONS)

USAGE_TOPIC = USAGE.name
DLQ_TOPIC = USAGE_DLQ.name
SAMPLES_TOPIC = GPU_SAMPLES.name
ALERTS_TOPIC = GPU_ALERTS.name
CONFIRMATIONS_TOPIC = CONFIRMATIONS.name
GPU_TOPICS = (SAMPLES_TOPIC, ALERTS_TOPIC)


def render_strimzi(
    specs: Sequence[TopicSpec] = TOPICS,
    cluster: str = "switchboard",
    replicas: int = 3,
    min_insync: int = 2,
) -> str:
    """The KafkaTopic manifests for `specs`, as committed under k8s/."""
    docs = [
        "# Rendered from services/switchboard_common/pipeline/topics.py: edit that, then run\n"
        "# python -m switchboard_common.pipeline.topics > "
        "k8s/components/kafka-strimzi/topics.yaml\n"
    ]
    for spec in specs:
        partitions = f"{spec.partitions}" + (
            f"  # {spec.partitions_env}" if spec.partitions_env else ""
        )
        docs.append(
            f"# {spec.about}\n"
            "apiVersion: kafka.strimzi.io/v1beta2\n"
            "kind: KafkaTopic\n"
            "metadata:\n"
            f"  name: {spec.resource_name}\n"
            f"  labels: {{strimzi.io/cluster: {cluster}}}\n"
            "spec:\n"
            f"  topicName: {spec.name}\n"
            f"  partitions: {partitions}\n"
            f"  replicas: {replicas}\n"
            "  config:\n"
            f"    min.insync.replicas: {min_insync}\n"
            f"    retention.ms: {spec.retention_ms}  # {_days(spec.retention_ms)}: "
            f"{spec.retention_why}\n"
        )
    return docs[0] + "---\n".join(docs[1:])


def _days(ms: int) -> str:
    days = ms // DAY_MS
    return f"{days} day" if days == 1 else f"{days} days"


if __name__ == "__main__":
    print(render_strimzi(), end="")
