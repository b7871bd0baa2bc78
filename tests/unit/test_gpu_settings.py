"""The gpu service's settings: read once from one environment mapping, with the
README's defaults, and a bad value refused at start, naming the variable."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from switchboard_common.env import SettingsError
from switchboard_common.settings import Settings
from switchboard_gpu.model_alerts import ModelAlertSettings
from switchboard_gpu.notify import EmailSettings, WebhookSettings
from switchboard_gpu.settings import GpuSettings


@pytest.fixture
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("SWITCHBOARD_HOME", str(tmp_path))
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "broker:9092")
    return Settings.from_env()


def test_defaults(base: Settings) -> None:
    own = GpuSettings.from_env(base, {})
    assert own.publish is True
    assert own.sampler.interval_s == 1.0
    assert own.sampler.process_every == 5
    assert own.sampler.saturated_percent == 95.0
    assert own.sampler.home == base.home
    assert own.publisher.kafka.bootstrap == "broker:9092"
    assert own.publisher.sample_buffer == 3600
    assert own.webhook is None
    assert own.email is None
    assert own.model_alerts == ModelAlertSettings()
    assert own.monitor_ping_s == 20.0
    assert own.script is None


def test_every_part_reads_the_one_mapping(base: Settings, tmp_path: Path) -> None:
    own = GpuSettings.from_env(
        base,
        {
            "SWITCHBOARD_GPU_INTERVAL_S": "0.5",
            "SWITCHBOARD_GPU_PUBLISH": "0",
            "SWITCHBOARD_GPU_SAMPLE_BUFFER": "10",
            "SWITCHBOARD_GPU_MONITOR_PING_S": "0.5",
            "SWITCHBOARD_GPU_SCRIPT": str(tmp_path / "gpus.json"),
            "SWITCHBOARD_ALERT_WEBHOOK_URL": "http://127.0.0.1:1/hook",
            "SWITCHBOARD_ALERT_WEBHOOK_SECRET": "s",
            "SWITCHBOARD_ALERT_SMTP_HOST": "127.0.0.1",
            "SWITCHBOARD_ALERT_SMTP_PORT": "2525",
            "SWITCHBOARD_ALERT_EMAIL_FROM": "gpu@example.com",
            "SWITCHBOARD_ALERT_EMAIL_TO": "a@example.com",
            "SWITCHBOARD_MODEL_ALERT_WINDOW": "1h",
        },
    )
    assert own.sampler.interval_s == 0.5
    assert own.publish is False
    assert own.publisher.sample_buffer == 10
    assert own.monitor_ping_s == 0.5
    assert own.script == tmp_path / "gpus.json"
    assert own.webhook == WebhookSettings(url="http://127.0.0.1:1/hook", secret="s")
    assert own.email == EmailSettings(
        host="127.0.0.1", port=2525, sender="gpu@example.com", recipients=("a@example.com",)
    )
    assert own.model_alerts == dataclasses.replace(ModelAlertSettings(), window="1h")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SWITCHBOARD_GPU_INTERVAL_S", "fast"),
        ("SWITCHBOARD_GPU_PROCESS_EVERY", "0"),
        ("SWITCHBOARD_GPU_SATURATED_PERCENT", "150"),
        ("SWITCHBOARD_GPU_PUBLISH", "no"),
        ("SWITCHBOARD_GPU_SAMPLE_BUFFER", "0"),
        ("SWITCHBOARD_GPU_MONITOR_PING_S", "0"),
        ("SWITCHBOARD_MODEL_ALERT_INTERVAL_S", "3601"),
        ("SWITCHBOARD_NODE_LABELS", "rack"),
        ("SWITCHBOARD_ALERT_WEBHOOK_URL", "http://127.0.0.1:1/hook"),
    ],
)
def test_a_bad_value_fails_naming_the_variable(base: Settings, name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        GpuSettings.from_env(base, {name: value})


def test_a_bad_smtp_port_is_named(base: Settings) -> None:
    email = {
        "SWITCHBOARD_ALERT_SMTP_HOST": "127.0.0.1",
        "SWITCHBOARD_ALERT_EMAIL_FROM": "gpu@example.com",
        "SWITCHBOARD_ALERT_EMAIL_TO": "a@example.com",
    }
    with pytest.raises(SettingsError, match="SWITCHBOARD_ALERT_SMTP_PORT"):
        GpuSettings.from_env(base, {**email, "SWITCHBOARD_ALERT_SMTP_PORT": "smtp"})
