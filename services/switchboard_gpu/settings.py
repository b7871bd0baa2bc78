"""The gpu service's settings (its SWITCHBOARD_GPU_*, SWITCHBOARD_ALERT_* and
SWITCHBOARD_MODEL_ALERT_* rows in the README), read once at start by setup()
and passed down: no gpu module reads the environment. Each part parses its
own variables from the one mapping given here."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from switchboard_common import env as values
from switchboard_common.settings import Settings
from switchboard_gpu.model_alerts import ModelAlertSettings
from switchboard_gpu.notify import EmailSettings, WebhookSettings
from switchboard_gpu.publisher import PublisherSettings
from switchboard_gpu.sampler import SamplerConfig

DEFAULT_MONITOR_PING_S = 20.0


@dataclass(frozen=True)
class GpuSettings:
    sampler: SamplerConfig
    # False (SWITCHBOARD_GPU_PUBLISH=0): nothing goes to Kafka, no alert outbox.
    publish: bool
    publisher: PublisherSettings
    # Alert notifications; None where the channel is not configured.
    webhook: WebhookSettings | None
    email: EmailSettings | None
    model_alerts: ModelAlertSettings
    # How often the WebSocket monitor pings an idle client.
    monitor_ping_s: float = DEFAULT_MONITOR_PING_S
    # Scripted readings (demos, tests) instead of NVML.
    script: Path | None = None

    @classmethod
    def from_env(cls, settings: Settings, env: Mapping[str, str] | None = None) -> GpuSettings:
        env = os.environ if env is None else env
        script = values.text(env, "SWITCHBOARD_GPU_SCRIPT")
        return cls(
            sampler=dataclasses.replace(SamplerConfig.from_env(env), home=settings.home),
            publish=values.choice(env, "SWITCHBOARD_GPU_PUBLISH", "1", ("0", "1")) == "1",
            publisher=PublisherSettings.from_env(settings.kafka_bootstrap, env),
            webhook=WebhookSettings.from_env(env),
            email=EmailSettings.from_env(env),
            model_alerts=ModelAlertSettings.from_env(env),
            monitor_ping_s=values.number(
                env, "SWITCHBOARD_GPU_MONITOR_PING_S", DEFAULT_MONITOR_PING_S, above=0
            ),
            script=Path(script) if script else None,
        )
