"""The usage service's settings: read once from one environment mapping, with
the README's defaults, and a bad value refused at start, naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from switchboard_common.env import SettingsError
from switchboard_common.pipeline.topics import USAGE
from switchboard_common.settings import Settings
from switchboard_usage.settings import UsageSettings


@pytest.fixture
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("SWITCHBOARD_HOME", str(tmp_path))
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "broker:9092")
    return Settings.from_env()


def test_defaults(base: Settings) -> None:
    own = UsageSettings.from_env(base, {})
    assert own.outbox.max_bytes == 1 << 30
    assert own.outbox.confirm_after_s == 10.0
    assert own.kafka.bootstrap == "broker:9092"
    assert own.kafka.idempotence is False
    assert own.kafka.send_timeout_s == 10.0
    assert own.kafka.partitions(USAGE) == 3
    assert own.sink_replay is False


def test_every_variable_is_read(base: Settings) -> None:
    own = UsageSettings.from_env(
        base,
        {
            "SWITCHBOARD_OUTBOX_MAX_BYTES": "1048576",
            "SWITCHBOARD_OUTBOX_CONFIRM_AFTER_S": "2",
            "SWITCHBOARD_KAFKA_IDEMPOTENCE": "True",
            "SWITCHBOARD_KAFKA_SEND_TIMEOUT_S": "2.5",
            "SWITCHBOARD_USAGE_PARTITIONS": "6",
            "SWITCHBOARD_SINK_REPLAY": "1",
        },
    )
    assert own.outbox.max_bytes == 1 << 20
    assert own.outbox.confirm_after_s == 2.0
    assert own.kafka.idempotence is True
    assert own.kafka.send_timeout_s == 2.5
    assert own.kafka.partitions(USAGE) == 6
    assert own.sink_replay is True


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SWITCHBOARD_OUTBOX_MAX_BYTES", "1 GiB"),
        ("SWITCHBOARD_OUTBOX_CONFIRM_AFTER_S", "0"),
        ("SWITCHBOARD_KAFKA_IDEMPOTENCE", "yes"),
        ("SWITCHBOARD_KAFKA_SEND_TIMEOUT_S", "-1"),
        ("SWITCHBOARD_USAGE_PARTITIONS", "0"),
        ("SWITCHBOARD_GPU_PARTITIONS", "three"),
        ("SWITCHBOARD_SINK_REPLAY", "yes"),
    ],
)
def test_a_bad_value_fails_naming_the_variable(base: Settings, name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        UsageSettings.from_env(base, {name: value})
