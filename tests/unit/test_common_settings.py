"""The settings every service shares (switchboard_common.settings) and the
typed readers each service's own settings use (switchboard_common.env): an
unset or empty variable takes the default, a bad one is refused naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from switchboard_common import env as values
from switchboard_common.env import SettingsError
from switchboard_common.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_readers_take_the_default_when_unset_or_empty() -> None:
    env = {"A": "", "B": "  "}
    assert values.integer(env, "A", 7) == 7
    assert values.number(env, "B", 0.5) == 0.5
    assert values.optional_integer(env, "A") is None
    assert values.choice(env, "A", "open", ("open", "closed")) == "open"
    assert values.text(env, "MISSING", "x") == "x"
    assert values.addresses(env, "B") == ()


def test_readers_parse_and_bound() -> None:
    env = {"N": " 12 ", "F": "2.5", "C": "closed", "L": "a:1,b:2"}
    assert values.integer(env, "N", 0, minimum=12) == 12
    assert values.number(env, "F", 0, above=2, maximum=2.5) == 2.5
    assert values.choice(env, "C", "open", ("open", "closed")) == "closed"
    assert values.addresses(env, "L") == ("a:1", "b:2")
    with pytest.raises(SettingsError, match="N must be above 12"):
        values.integer(env, "N", 0, above=12)
    with pytest.raises(SettingsError, match="F must be at most 2"):
        values.number(env, "F", 0, maximum=2)
    with pytest.raises(SettingsError, match="F must be a finite number"):
        values.number({"F": "inf"}, "F", 0)


def test_shared_settings_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_REGISTRY_WAIT_S", "2.5")
    monkeypatch.setenv("SWITCHBOARD_DRAIN_DELAY_S", "1")
    settings = Settings.from_env()
    assert settings.registry_wait_s == 2.5
    assert settings.drain_delay_s == 1.0
    monkeypatch.delenv("SWITCHBOARD_REGISTRY_WAIT_S")
    assert Settings.from_env().registry_wait_s == 30.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SWITCHBOARD_REGISTRY_WAIT_S", "0"),
        ("SWITCHBOARD_DRAIN_DELAY_S", "soon"),
        ("SWITCHBOARD_EDGE_PORT", "http"),
    ],
)
def test_shared_settings_name_a_bad_value(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        Settings.from_env()


def test_a_service_refuses_to_start_on_a_bad_shared_value(tmp_path: Path) -> None:
    """Before logging is set up (its level is a shared setting): exit 2 and
    one line on stderr naming the variable, no traceback."""
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{REPO / 'services'}:{REPO / 'gen'}",
        "SWITCHBOARD_HOME": str(tmp_path),
        "SWITCHBOARD_REGISTRY_WAIT_S": "-1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "switchboard_usage"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "switchboard-usage: cannot start: SWITCHBOARD_REGISTRY_WAIT_S" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_engine_reads_its_binaries_and_names_a_bad_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from switchboard_engine.settings import EngineSettings

    monkeypatch.setenv("SWITCHBOARD_LLAMA_SERVER", str(tmp_path / "llama-server"))
    monkeypatch.setenv("SWITCHBOARD_VLLM_BIN", str(tmp_path / "vllm"))
    monkeypatch.setenv("SWITCHBOARD_GPU_SCRIPT", str(tmp_path / "gpus.json"))
    engine = EngineSettings.from_env(Settings.from_env())
    assert engine.llama_server == tmp_path / "llama-server"
    assert engine.vllm_bin == tmp_path / "vllm"
    assert engine.gpu_script == tmp_path / "gpus.json"
    monkeypatch.setenv("SWITCHBOARD_ENGINE_START_TIMEOUT_S", "2m")
    with pytest.raises(SettingsError, match="SWITCHBOARD_ENGINE_START_TIMEOUT_S"):
        EngineSettings.from_env(Settings.from_env())


def test_addresses_and_ports_are_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_HOST", "10.0.0.1")
    monkeypatch.setenv("SWITCHBOARD_USAGE_ADDR", "usage.internal:7000")
    monkeypatch.setenv("SWITCHBOARD_GPU_METRICS_PORT", "0")
    monkeypatch.setenv("SWITCHBOARD_GPU_MONITOR_PORT", "61057")
    monkeypatch.delenv("SWITCHBOARD_GPU_MONITOR_ADDR", raising=False)
    monkeypatch.delenv("SWITCHBOARD_REGISTRY_ADDR", raising=False)
    monkeypatch.delenv("SWITCHBOARD_REGISTRY_METRICS_PORT", raising=False)
    monkeypatch.delenv("SWITCHBOARD_GPU_ADDR", raising=False)
    settings = Settings.from_env()
    # Changed after the read: no effect on the settings already built.
    monkeypatch.setenv("SWITCHBOARD_REGISTRY_ADDR", "elsewhere:1")
    monkeypatch.setenv("SWITCHBOARD_GPU_MONITOR_ADDR", "elsewhere:2")
    assert settings.address("usage") == "usage.internal:7000"
    assert settings.address("registry") == f"10.0.0.1:{settings.ports['registry']}"
    assert settings.metrics_port("gpu") == 0
    assert settings.metrics_port("registry") == settings.ports["registry"] + 1000
    assert settings.monitor_address() == "10.0.0.1:61057"
    monkeypatch.setenv("SWITCHBOARD_GPU_MONITOR_PORT", "monitor")
    with pytest.raises(SettingsError, match="SWITCHBOARD_GPU_MONITOR_PORT"):
        Settings.from_env()
