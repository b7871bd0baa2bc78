"""What the CLI prints, from the edge's JSON (rendered to plain text): models, keys,
usage, the stack, and GPUs, where a node without NVML says so with NVML's reason and
absent readings are "—", never zero."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console, RenderableType

from switchboard_cli import render

MODEL: dict[str, Any] = {
    "name": "llama-3",
    "aliases": ["llama"],
    "kind": "MODEL_KIND_CHAT",
    "description": "self-hosted",
    "tags": ["local"],
    "pricing": {"input_per_1k": 0.0001, "output_per_1k": 0.0004, "currency": "USD"},
    "online": True,
    "deployments": [
        {"provider": "local-vllm", "upstream_model": "meta-llama/L3", "enabled": True},
        {"provider": "backup", "upstream_model": "l3", "enabled": False},
    ],
}


def text(renderable: RenderableType, width: int = 160, soft_wrap: bool = False) -> str:
    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    console.print(renderable, soft_wrap=soft_wrap)
    return console.export_text()


def test_models_table_shows_state_deployments_and_prices() -> None:
    offline = {**MODEL, "name": "old", "online": False, "deployments": [], "pricing": {}}
    out = text(render.models_table([MODEL, offline]))
    assert "llama-3" in out
    assert "llama" in out
    assert "● online" in out
    assert "○ offline" in out
    assert "local-vllm/meta-llama/L3" in out
    assert "backup/l3 (disabled)" in out
    assert "0.0001 / 0.0004 USD" in out
    assert "none" in out  # the offline model has no deployment


def test_enum_labels_and_numbers() -> None:
    assert render.enum_label("MODEL_KIND_EMBEDDING", "MODEL_KIND_") == "embedding"
    assert render.enum_label("MODEL_KIND_UNSPECIFIED", "MODEL_KIND_") == "—"
    assert render.enum_label(None, "X_") == "—"
    assert render.number(1234567.0) == "1,234,567"
    assert render.number(None) == "—"
    assert render.money(0) == "0"
    assert render.money(0.000016) == "0.000016"
    assert render.money(12.5) == "12.5"
    assert render.limit(0) == "none"
    assert render.limit(600) == "600"


def test_keys_table_never_shows_more_than_the_prefix() -> None:
    keys = [
        {"name": "team-a", "display_prefix": "sb-abc", "models": ["m"], "rpm": 600},
        {"name": "old", "display_prefix": "sb-def", "revoked": True},
    ]
    out = text(render.keys_table(keys))
    assert "team-a" in out
    assert "sb-abc…" in out
    assert "active" in out
    assert "revoked" in out
    assert "all" in out  # no allow-list: every model


def test_a_created_key_prints_the_whole_secret_on_one_line() -> None:
    secret = "sb-" + "x" * 60
    reply = {"key": {"name": "team-a", "models": [], "rpm": 60}, "secret": secret}
    out = text(render.key_created(reply), width=40, soft_wrap=True)
    assert f"  {secret}" in out.splitlines()
    assert "shown only this once" in out
    assert f"export SWITCHBOARD_API_KEY={secret}" in out
    assert "rpm 60" in out


def test_usage_table_by_model_with_totals() -> None:
    summary = {
        "period": {"start": "2025-01-01", "end": "2025-01-31"},
        "total_requests": 3,
        "total_tokens": 1500,
        "total_cost": 0.0021,
        "by_model": {
            "b-model": {"requests": 1, "tokens": 500, "cost": 0.0001},
            "a-model": {"requests": 2, "tokens": 1000, "cost": 0.002},
        },
        "currency": "USD",
    }
    out = text(render.usage_table(summary))
    lines = out.splitlines()
    assert "Usage 2025-01-01 … 2025-01-31 (UTC)" in out
    assert "COST (USD)" in out
    a_row = next(line for line in lines if "a-model" in line)
    assert "2" in a_row
    assert "1,000" in a_row
    assert "0.002" in a_row
    assert out.index("a-model") < out.index("b-model")
    total = next(line for line in lines if "total" in line)
    assert "1,500" in total
    assert "0.0021" in total
    empty = text(render.usage_table({"period": {"start": "2025-01-01", "end": "2025-01-01"}}))
    assert "no calls in this period" in empty


def test_stack_table() -> None:
    rows = [
        render.ComponentState("registry", 10, True, "127.0.0.1:50052"),
        render.ComponentState("router", 11, False, "127.0.0.1:50051"),
        render.ComponentState("envoy", None, False, "http://127.0.0.1:8080"),
    ]
    out = text(render.stack_table(rows, "/tmp/home"))
    assert "● healthy" in out
    assert "running, not ready" in out
    assert "○ stopped" in out


NO_NVML = {
    "hostname": "vm",
    "nvml_state": "NVML_STATE_UNAVAILABLE",
    "reason": "NVML Shared Library Not Found",
    "devices": [],
    "sample_time": "2026-01-01T00:00:00.5Z",
}


def test_a_node_without_nvml_says_so_with_the_reason_not_zeros() -> None:
    out = text(render.gpu_view(NO_NVML))
    assert "no GPU / NVML unavailable: NVML Shared Library Not Found" in out
    assert "0%" not in out
    assert "vm" in out
    line = render.gpu_line(NO_NVML)
    assert line.endswith("no GPU / NVML unavailable: NVML Shared Library Not Found")


def test_nvml_without_devices_and_no_sample_yet() -> None:
    none = {"hostname": "vm", "nvml_state": "NVML_STATE_NO_DEVICES", "driver_version": "550"}
    assert "reports no devices (driver 550)" in text(render.gpu_view(none))
    assert "has not sampled" in text(render.gpu_view({}))


def test_devices_show_readings_and_absent_ones_as_dashes() -> None:
    status = {
        "hostname": "gpu-node",
        "nvml_state": "NVML_STATE_AVAILABLE",
        "driver_version": "550.54",
        "cuda_version": "12.4",
        "devices": [
            {
                "index": 0,
                "name": "NVIDIA H100 80GB HBM3",
                "utilization_gpu_percent": 42.0,
                "memory_used_mib": 1024,
                "memory_total_mib": 81559,
                "temperature_c": 35.0,
                "power_w": 71.5,
                "power_limit_w": 700.0,
                "health": "GPU_HEALTH_SATURATED",
                "health_reason": "utilization_gpu_percent 97 >= 95",
                "processes": [{"pid": 1}],
            },
            {
                "index": 1,
                "name": "NVIDIA H100 80GB HBM3",
                "health": "GPU_HEALTH_UNHEALTHY",
                "nvml_errors": ["temperature: GPU is lost"],
            },
        ],
    }
    out = text(render.gpu_view(status), width=200)
    assert "driver 550.54" in out
    assert "42%" in out
    assert "1,024 / 81,559 MiB" in out
    assert "35 °C" in out
    assert "72 / 700 W" in out
    assert "saturated" in out
    assert "utilization_gpu_percent 97 >= 95" in out
    assert "temperature: GPU is lost" in out
    gpu1 = next(line for line in out.splitlines() if "│ 1 " in line)
    assert "0%" not in gpu1
    assert "—" in gpu1
    line = render.gpu_line(status)
    assert "gpu0 util 42%" in line
    assert "gpu1 util —" in line


def test_alerts_are_listed_with_their_message() -> None:
    alert = {
        "time": "2026-01-01T00:00:00Z",
        "state": "ALERT_STATE_FIRING",
        "severity": "SEVERITY_WARNING",
        "rule_name": "hot",
        "hostname": "gpu-node",
        "gpu_index": 1,
        "value": 85,
        "threshold": 80,
        "message": "temperature_c 85 > 80 for 60s",
    }
    out = text(render.gpu_view(NO_NVML, [alert]), width=200)
    assert "firing" in out
    assert "warning" in out
    assert "gpu-node#1" in out
    assert "temperature_c 85 > 80 for 60s" in out


def test_data_is_printed_literally_never_as_markup() -> None:
    tricky = {**MODEL, "description": "[bold]not bold[/] [/oops]", "tags": ["[red]"]}
    out = text(render.models_table([tricky]))
    assert "[bold]not bold[/] [/oops]" in out
    assert "[red]" in out
    keys = text(render.keys_table([{"name": "[/]", "models": ["[x]"]}]))
    assert "[/]" in keys
    usage = text(render.usage_table({"by_model": {"[/]": {"requests": 1}}, "currency": "[e]"}))
    assert "[/]" in usage
    assert "COST ([e])" in usage


def test_tiny_costs_keep_their_digits_and_odd_numbers_do_not_crash() -> None:
    assert render.money(0.000000123) == "0.000000123"
    assert render.money("NaN") == "nan"
    assert render.number("NaN") == "NaN"
    assert render.number("Infinity") == "Infinity"
