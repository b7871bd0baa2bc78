"""The usage service's settings (its SWITCHBOARD_OUTBOX_*, SWITCHBOARD_KAFKA_*,
SWITCHBOARD_*_PARTITIONS, SWITCHBOARD_SINK_REPLAY and SWITCHBOARD_GPU_SINK_FLUSH_S
rows in the README), read once at start by setup() and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from switchboard_common import env as values
from switchboard_common.pipeline.kafka import KafkaSettings
from switchboard_common.pipeline.outbox import OutboxSettings
from switchboard_common.settings import Settings

# The usage outbox's disk quota.
DEFAULT_OUTBOX_MAX_BYTES = 1 << 30
# How long GPU and host samples may wait in the sink for others to share an insert.
DEFAULT_GPU_SINK_FLUSH_S = 5.0


@dataclass(frozen=True)
class UsageSettings:
    outbox: OutboxSettings
    kafka: KafkaSettings
    # The sink re-reads the usage topic from offset 0 once (a ClickHouse re-ingest).
    sink_replay: bool = False
    gpu_sink_flush_s: float = DEFAULT_GPU_SINK_FLUSH_S

    @classmethod
    def from_env(cls, settings: Settings, env: Mapping[str, str] | None = None) -> UsageSettings:
        env = os.environ if env is None else env
        return cls(
            outbox=OutboxSettings.from_env(
                "SWITCHBOARD_OUTBOX_MAX_BYTES", DEFAULT_OUTBOX_MAX_BYTES, env
            ),
            kafka=KafkaSettings.from_env(settings.kafka_bootstrap, env),
            sink_replay=values.choice(env, "SWITCHBOARD_SINK_REPLAY", "0", ("0", "1")) == "1",
            gpu_sink_flush_s=values.number(
                env,
                "SWITCHBOARD_GPU_SINK_FLUSH_S",
                DEFAULT_GPU_SINK_FLUSH_S,
                above=0,
                maximum=60,
            ),
        )
