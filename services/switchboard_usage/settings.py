"""The usage service's settings (its SWITCHBOARD_OUTBOX_*, SWITCHBOARD_KAFKA_*,
SWITCHBOARD_*_PARTITIONS and SWITCHBOARD_SINK_REPLAY rows in the README), read
once at start by setup() and passed down."""

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


@dataclass(frozen=True)
class UsageSettings:
    outbox: OutboxSettings
    kafka: KafkaSettings
    # The sink re-reads the usage topic from offset 0 once (a ClickHouse re-ingest).
    sink_replay: bool = False

    @classmethod
    def from_env(cls, settings: Settings, env: Mapping[str, str] | None = None) -> UsageSettings:
        env = os.environ if env is None else env
        return cls(
            outbox=OutboxSettings.from_env(
                "SWITCHBOARD_OUTBOX_MAX_BYTES", DEFAULT_OUTBOX_MAX_BYTES, env
            ),
            kafka=KafkaSettings.from_env(settings.kafka_bootstrap, env),
            sink_replay=values.choice(env, "SWITCHBOARD_SINK_REPLAY", "0", ("0", "1")) == "1",
        )
