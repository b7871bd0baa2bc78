"""The router's settings: read once from the environment, defaults as the
README's table gives them, and a bad value refused at start, naming the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from switchboard_common.env import SettingsError
from switchboard_router.breaker import BreakerConfig
from switchboard_router.settings import RouterSettings

REPO = Path(__file__).resolve().parents[2]


def test_defaults_match_the_readme() -> None:
    settings = RouterSettings.from_env({})
    assert settings == RouterSettings()
    assert settings.max_attempts == 3
    assert settings.usage_durable_wait_s == 1.0
    assert settings.usage_buffer == 100_000
    assert settings.tts_cache_ttl_s == 86400
    assert settings.tts_url_ttl_s == 3600
    assert settings.breaker == BreakerConfig(
        consecutive_failures=5,
        error_rate=0.5,
        min_requests=20,
        window_s=30.0,
        cooldown_s=30.0,
        half_open_probes=1,
    )
    assert settings.routing_seed is None
    assert settings.gpu_saturated_percent == 95.0
    assert settings.limits_fail_open is True
    assert settings.gpu_addresses == ()
    assert settings.accounts_file is None


def test_every_variable_is_read() -> None:
    settings = RouterSettings.from_env(
        {
            "SWITCHBOARD_MAX_ATTEMPTS": "1",
            "SWITCHBOARD_USAGE_DURABLE_WAIT_S": "0.25",
            "SWITCHBOARD_USAGE_BUFFER": "10",
            "SWITCHBOARD_TTS_CACHE_TTL_S": "60",
            "SWITCHBOARD_TTS_URL_TTL_S": "30",
            "SWITCHBOARD_BREAKER_CONSECUTIVE_FAILURES": "2",
            "SWITCHBOARD_BREAKER_ERROR_RATE": "1",
            "SWITCHBOARD_BREAKER_MIN_REQUESTS": "7",
            "SWITCHBOARD_BREAKER_WINDOW_S": "4.5",
            "SWITCHBOARD_BREAKER_COOLDOWN_S": "0",
            "SWITCHBOARD_BREAKER_HALF_OPEN_PROBES": "3",
            "SWITCHBOARD_ROUTING_SEED": "-12",
            "SWITCHBOARD_GPU_SATURATED_PERCENT": "80",
            "SWITCHBOARD_LIMITS_ON_REDIS_ERROR": "closed",
            "SWITCHBOARD_GPU_ADDRS": " gpu-a:50055, ,10.0.0.2:50055 ",
            "SWITCHBOARD_ACCOUNTS_FILE": "/etc/switchboard/accounts.txt",
            "SWITCHBOARD_PROVIDER_PLACEMENT": "router",
        }
    )
    assert settings == RouterSettings(
        max_attempts=1,
        usage_durable_wait_s=0.25,
        usage_buffer=10,
        tts_cache_ttl_s=60,
        tts_url_ttl_s=30,
        breaker=BreakerConfig(
            consecutive_failures=2,
            error_rate=1.0,
            min_requests=7,
            window_s=4.5,
            cooldown_s=0.0,
            half_open_probes=3,
        ),
        routing_seed=-12,
        gpu_saturated_percent=80.0,
        limits_fail_open=False,
        gpu_addresses=("gpu-a:50055", "10.0.0.2:50055"),
        accounts_file=Path("/etc/switchboard/accounts.txt"),
        provider_placement="router",
    )


def test_empty_means_the_default() -> None:
    assert (
        RouterSettings.from_env({"SWITCHBOARD_MAX_ATTEMPTS": "", "SWITCHBOARD_ROUTING_SEED": ""})
        == RouterSettings()
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SWITCHBOARD_MAX_ATTEMPTS", "three"),
        ("SWITCHBOARD_MAX_ATTEMPTS", "0"),
        ("SWITCHBOARD_USAGE_DURABLE_WAIT_S", "-1"),
        ("SWITCHBOARD_USAGE_DURABLE_WAIT_S", "nan"),
        ("SWITCHBOARD_USAGE_BUFFER", "1e5"),
        ("SWITCHBOARD_TTS_CACHE_TTL_S", "0"),
        ("SWITCHBOARD_TTS_URL_TTL_S", "1h"),
        ("SWITCHBOARD_BREAKER_CONSECUTIVE_FAILURES", "0"),
        ("SWITCHBOARD_BREAKER_ERROR_RATE", "1.5"),
        ("SWITCHBOARD_BREAKER_ERROR_RATE", "0"),
        ("SWITCHBOARD_BREAKER_MIN_REQUESTS", "2.5"),
        ("SWITCHBOARD_BREAKER_WINDOW_S", "0"),
        ("SWITCHBOARD_BREAKER_COOLDOWN_S", "-0.1"),
        ("SWITCHBOARD_BREAKER_HALF_OPEN_PROBES", "0"),
        ("SWITCHBOARD_ROUTING_SEED", "seed"),
        ("SWITCHBOARD_GPU_SATURATED_PERCENT", "101"),
        ("SWITCHBOARD_LIMITS_ON_REDIS_ERROR", "shut"),
        ("SWITCHBOARD_GPU_ADDRS", "gpu-a"),
        ("SWITCHBOARD_PROVIDER_PLACEMENT", "sidecar"),
    ],
)
def test_a_bad_value_fails_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        RouterSettings.from_env({name: value})


def test_the_router_refuses_to_start_on_a_bad_value(tmp_path: Path) -> None:
    """`python -m switchboard_router` with a bad value: exit 2 and one log line
    naming the variable, before it binds a port or dials a service."""
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{REPO / 'services'}:{REPO / 'gen'}",
        "SWITCHBOARD_HOME": str(tmp_path),
        "SWITCHBOARD_GRPC_PORT": "0",
        "SWITCHBOARD_METRICS_HOST": "127.0.0.1",
        "SWITCHBOARD_ROUTER_METRICS_PORT": "0",
        "SWITCHBOARD_BREAKER_ERROR_RATE": "2",
    }
    done = subprocess.run(
        [sys.executable, "-m", "switchboard_router"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    output = done.stdout + done.stderr
    assert "cannot start" in output
    assert "SWITCHBOARD_BREAKER_ERROR_RATE must be at most 1" in output
    assert "Traceback" not in output
