"""GPU monitoring through the whole stack, as `make up` runs it: the gpu
service reads scripted NVML readings from a file (SWITCHBOARD_GPU_SCRIPT), and
its status, history and alerts are read at the edge under /v1/admin/gpu/, the
history having gone gpu service → Kafka → the usage service's gpu sink →
ClickHouse and back."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from switchboard_stack.harness import Stack, running_stack
from tests.conftest import eventually

pytestmark = pytest.mark.e2e

ADMIN_KEY = "gpu-e2e-admin-key"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
WAIT_S = 60.0
DEVICE = {
    "index": 0,
    "uuid": "GPU-e2e-0",
    "name": "NVIDIA H100 80GB HBM3",
    "utilization_gpu_percent": 97,
    "memory_used_mib": 70000,
    "memory_total_mib": 81559,
    "temperature_c": 85,
    "power_w": 650.5,
    "power_limit_w": 700,
    "processes": [{"pid": 4242, "name": "vllm", "used_memory_mib": 69000}],
}


def write_script(path: Path, **changes: Any) -> None:
    # Write then rename: the service never reads a half-written file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"devices": [{**DEVICE, **changes}]}))
    tmp.replace(path)


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gpu-script") / "gpu.json"
    write_script(path)
    return path


@pytest.fixture(scope="module")
def stack(script: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "SWITCHBOARD_GPU_SCRIPT": str(script),
        "SWITCHBOARD_GPU_INTERVAL_S": "0.2",
        "SWITCHBOARD_ADMIN_KEY": ADMIN_KEY,
    }
    with running_stack({}, tmp_path_factory.mktemp("gpu"), env) as running:
        yield running


def get(stack: Stack, path: str, **params: Any) -> dict[str, Any]:
    reply = httpx.get(f"{stack.edge_url}{path}", params=params, headers=ADMIN, timeout=30)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def until(check: Callable[[], Any], what: str) -> Any:
    """Poll until `check()` is truthy: history arrives through Kafka and a
    batching sink, so within seconds, not at once."""
    return eventually(check, timeout=WAIT_S, interval=0.25, what=what)


def test_status_shows_the_scripted_gpu(stack: Stack) -> None:
    reply = get(stack, "/v1/admin/gpu/status")

    status = reply["status"]
    assert status["nvml_state"] == "NVML_STATE_AVAILABLE"
    (device,) = status["devices"]
    assert (device["uuid"], device["utilization_gpu_percent"]) == ("GPU-e2e-0", 97)
    assert device["health"] == "GPU_HEALTH_SATURATED"
    assert device["health_reason"] == "utilization_gpu_percent 97 >= 95"
    assert device["processes"] == [{"pid": 4242, "name": "vllm", "used_memory_mib": 69000}]
    # A reading the script leaves out is absent, not 0.
    assert "sm_clock_mhz" not in device


def test_history_comes_back_from_clickhouse(stack: Stack) -> None:
    now = dt.datetime.now(dt.UTC)
    params = {
        "start": (now - dt.timedelta(minutes=5)).isoformat(),
        "end": (now + dt.timedelta(minutes=1)).isoformat(),
        "interval": "5m",
        "metric": "temperature_c",
        "gpu_uuid": "GPU-e2e-0",
    }

    reply = until(
        lambda: (r := get(stack, "/v1/admin/gpu/history", **params))["points"] and r,
        "GPU samples in ClickHouse",
    )

    assert reply["metric"] == "temperature_c"
    assert reply["interval"] == "5m"
    point = reply["points"][0]
    assert (point["gpu_uuid"], point["avg"], point["max"], point["min"]) == (
        "GPU-e2e-0",
        85,
        85,
        85,
    )
    assert point["samples"] >= 1
    bad = httpx.get(
        f"{stack.edge_url}/v1/admin/gpu/history",
        params={"interval": "7m"},
        headers=ADMIN,
        timeout=30,
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "interval"


def test_an_alert_rule_from_the_admin_api_fires_and_resolves(stack: Stack, script: Path) -> None:
    created = httpx.post(
        f"{stack.edge_url}/v1/admin/alert-rules",
        headers=ADMIN,
        json={
            "name": "e2e-hot",
            "metric": "temperature_c",
            "comparator": "COMPARATOR_GREATER_THAN",
            "threshold": 80,
            "duration": "0s",
            "severity": "SEVERITY_WARNING",
        },
        timeout=30,
    )
    assert created.status_code == 200, created.text

    def listed(active_only: bool) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = get(
            stack, "/v1/admin/gpu/alerts", active_only=str(active_only).lower()
        ).get("alerts", [])
        return [a for a in alerts if a["rule_name"] == "e2e-hot"]

    (firing,) = until(lambda: listed(True), "the alert firing in ClickHouse")
    assert firing["state"] == "ALERT_STATE_FIRING"
    status = get(stack, "/v1/admin/gpu/status")
    assert [a["alert_id"] for a in status["active_alerts"]] == [firing["alert_id"]]

    write_script(script, temperature_c=60)
    (resolved,) = until(
        lambda: [a for a in listed(False) if a["state"] == "ALERT_STATE_RESOLVED"],
        "the alert resolved in ClickHouse",
    )
    assert resolved["alert_id"] == firing["alert_id"]
    assert listed(True) == []
