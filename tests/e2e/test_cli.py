"""The `switchboard` CLI end to end: it runs as a subprocess (as a user runs it)
against the whole stack, through Envoy: add a model, chat with it (streamed), switch
it off and see chat fail clearly, create, use and revoke a key, list, see the call in
the usage summary, GPU status without a GPU, clear errors with meaningful exit codes,
and up/status/down on a fresh home."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from switchboard_stack.components import SERVICES
from switchboard_stack.harness import REPO, Stack, free_port, running_stack

pytestmark = pytest.mark.e2e

ADMIN_KEY = "cli-e2e-admin-key-0123456789"
OPS_KEY = "cli-e2e-ops-key-0123456789"
# Registry changes reach the routers within a second; usage lands in ClickHouse in
# about one. Generous bounds for a loaded machine; polls end as soon as it holds.
LIVE_S = 10.0
COUNTED_S = 20.0
SECRET = re.compile(r"\bsb-[A-Za-z0-9_-]{20,}")
# Variables from the developer's shell that would point the CLI elsewhere.
OUTSIDE = ("SWITCHBOARD_EDGE_URL", "SWITCHBOARD_API_KEY", "SWITCHBOARD_ADMIN_KEY")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = {
        "providers": [{"name": "mock", "kind": "mock"}],
        "models": [
            {"name": "mock-chat", "deployments": [{"provider": "mock", "model": "mock-echo"}]},
        ],
        "keys": [{"name": "ops", "key_env": "CLI_E2E_OPS_KEY"}],
    }
    env = {"SWITCHBOARD_ADMIN_KEY": ADMIN_KEY, "CLI_E2E_OPS_KEY": OPS_KEY}
    with running_stack(config, tmp_path_factory.mktemp("cli"), env) as running:
        yield running


def run_cli(
    base_env: Mapping[str, str],
    *argv: str,
    changes: Mapping[str, str | None] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """`python -m switchboard_cli ARGV` as a user would run it; `changes` set (or, with
    None, unset) variables."""
    env = {k: v for k, v in base_env.items() if k not in OUTSIDE}
    env.update({"COLUMNS": "200", "PYTHONPATH": f"{REPO / 'services'}:{REPO / 'gen'}"})
    for name, value in (changes or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    done = subprocess.run(
        [sys.executable, "-m", "switchboard_cli", *argv],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def cli(stack: Stack, *argv: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    defaults: dict[str, str | None] = {
        "SWITCHBOARD_EDGE_URL": stack.edge_url,
        "SWITCHBOARD_ADMIN_KEY": ADMIN_KEY,
        "SWITCHBOARD_API_KEY": OPS_KEY,
    }
    return run_cli(stack.env, *argv, changes={**defaults, **env})


def until(
    within_s: float,
    attempt: Callable[[], subprocess.CompletedProcess[str]],
    done: Callable[[subprocess.CompletedProcess[str]], bool],
) -> subprocess.CompletedProcess[str]:
    """Run attempt() until done(result), failing after within_s (each attempt is a
    whole CLI run, so there is no sleep between them)."""
    deadline = time.monotonic() + within_s
    while True:
        result = attempt()
        if done(result):
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"not done within {within_s}s; last run: {result}")


def ok(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == 0


def test_status_shows_every_component_healthy(stack: Stack) -> None:
    shown = cli(stack, "status")
    assert shown.returncode == 0, shown.stderr
    for component in ("broker", *SERVICES, "envoy"):
        line = next(line for line in shown.stdout.splitlines() if f" {component} " in line)
        assert "● healthy" in line


def test_a_model_added_with_the_cli_chats_and_goes_offline(stack: Stack) -> None:
    added = cli(
        stack,
        "models",
        "add",
        "cli-model",
        "--provider",
        "mock",
        "--upstream-model",
        "mock-echo",
        "--alias",
        "cli-alias",
        "--tag",
        "cli",
        "--description",
        "added by the CLI",
        "--input-per-1k",
        "0.001",
        "--output-per-1k",
        "0.002",
    )
    assert added.returncode == 0, added.stderr
    assert "added model cli-model, online" in added.stdout

    listed = cli(stack, "models", "list", "--tag", "cli")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "cli-model" in line)
    assert "● online" in row
    assert "mock/mock-echo" in row
    assert "0.001 / 0.002 USD" in row
    assert "added by the CLI" in row

    streamed = until(
        LIVE_S, lambda: cli(stack, "chat", "hello from the cli", "-m", "cli-model"), ok
    )
    assert streamed.stdout.startswith("[mock]")
    assert "hello from the cli" in streamed.stdout
    assert re.search(r"cli-model · \d+ prompt \+ \d+ completion tokens", streamed.stderr)
    whole = cli(stack, "chat", "again", "-m", "cli-alias", "--no-stream")
    assert whole.returncode == 0, whole.stderr
    assert whole.stdout.startswith("[mock]")

    disabled = cli(stack, "models", "disable", "cli-model")
    assert disabled.returncode == 0, disabled.stderr
    assert "cli-model is offline" in disabled.stdout
    refused = until(
        LIVE_S, lambda: cli(stack, "chat", "hi", "-m", "cli-model"), lambda r: not ok(r)
    )
    assert refused.returncode == 1
    assert "is offline" in refused.stderr
    assert "HTTP 404" in refused.stderr
    assert "switchboard models enable" in refused.stderr
    offline = cli(stack, "models", "list", "--status", "offline", "--json")
    assert "cli-model" in [m["name"] for m in json.loads(offline.stdout)["models"]]

    assert cli(stack, "models", "enable", "cli-model").returncode == 0
    until(LIVE_S, lambda: cli(stack, "chat", "back", "-m", "cli-model"), ok)


def test_a_rerank_model_with_its_unit_price_becomes_the_rerank_default(stack: Stack) -> None:
    added = cli(
        stack,
        "models",
        "add",
        "cli-rerank",
        "--kind",
        "rerank",
        "--provider",
        "mock",
        "--upstream-model",
        "bge-reranker",
        "--per-search-unit",
        "0.002",
    )
    assert added.returncode == 0, added.stderr
    row = next(line for line in added.stdout.splitlines() if "cli-rerank" in line)
    assert "rerank" in row
    assert "0.002/search unit USD" in row
    listed = cli(stack, "models", "list", "--kind", "rerank", "--json")
    assert [m["name"] for m in json.loads(listed.stdout)["models"]] == ["cli-rerank"]

    activated = cli(stack, "models", "activate", "cli-rerank", "--use", "rerank")
    assert activated.returncode == 0, activated.stderr
    assert "cli-rerank is now the active rerank model" in activated.stdout
    shown = cli(stack, "models", "defaults")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert any(re.search(r"\brerank\b.*\bcli-rerank\b", line) for line in lines)
    assert any(re.search(r"\btts\b.*not set", line) for line in lines)
    as_json = json.loads(cli(stack, "models", "defaults", "--json").stdout)
    assert {"use": "MODEL_USE_RERANK", "model": "cli-rerank"} in as_json["defaults"]


def test_default_parameters_set_with_the_cli_are_stored(stack: Stack) -> None:
    added = cli(
        stack,
        "models",
        "add",
        "cli-tuned",
        "--provider",
        "mock",
        "--upstream-model",
        "mock-echo",
        "--default-temperature",
        "0.25",
        "--default-max-tokens",
        "48",
        "--json",
    )
    assert added.returncode == 0, added.stderr
    model = json.loads(added.stdout)["model"]
    assert model["default_parameters"] == {"temperature": 0.25, "max_tokens": 48}
    listed = cli(stack, "models", "list", "--json")
    (stored,) = [m for m in json.loads(listed.stdout)["models"] if m["name"] == "cli-tuned"]
    assert stored["default_parameters"] == {"temperature": 0.25, "max_tokens": 48}


def test_a_key_is_created_shown_once_used_and_revoked(stack: Stack) -> None:
    created = cli(stack, "keys", "create", "cli-team", "--model", "mock-chat", "--rpm", "600")
    assert created.returncode == 0, created.stderr
    assert "shown only this once" in created.stdout
    secrets = set(SECRET.findall(created.stdout))
    assert len(secrets) == 1
    secret = secrets.pop()

    def chat_as_team() -> subprocess.CompletedProcess[str]:
        return cli(stack, "chat", "hi", "-m", "mock-chat", SWITCHBOARD_API_KEY=secret)

    assert until(LIVE_S, chat_as_team, ok).stdout.startswith("[mock]")
    listed = cli(stack, "keys", "list")
    assert "cli-team" in listed.stdout
    assert secret not in listed.stdout

    revoked = cli(stack, "keys", "revoke", "cli-team")
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked key cli-team" in revoked.stdout
    refused = until(LIVE_S, chat_as_team, lambda r: not ok(r))
    assert refused.returncode == 4
    assert "HTTP 401" in refused.stderr
    assert "unknown or revoked" in refused.stderr
    every = cli(stack, "keys", "list", "--all")
    row = next(line for line in every.stdout.splitlines() if "cli-team" in line)
    assert "revoked" in row
    assert secret not in every.stdout


def _requests(stack: Stack, model: str, start: str, end: str) -> float:
    summary = cli(stack, "usage", "summary", "--start", start, "--end", end, "--json")
    assert summary.returncode == 0, summary.stderr
    by_model: dict[str, Any] = json.loads(summary.stdout)["by_model"]
    return float(by_model.get(model, {}).get("requests", 0))


def test_the_usage_summary_shows_a_chat_within_seconds(stack: Stack) -> None:
    today = dt.datetime.now(dt.UTC).date()
    # A day either side: a run across midnight UTC still sees its call.
    start, end = (
        (today - dt.timedelta(days=1)).isoformat(),
        (today + dt.timedelta(days=1)).isoformat(),
    )
    before = _requests(stack, "mock-chat", start, end)
    chatted = cli(stack, "chat", "count me", "-m", "mock-chat")
    assert chatted.returncode == 0, chatted.stderr
    until(
        COUNTED_S,
        lambda: cli(stack, "usage", "summary", "--start", start, "--end", end, "--json"),
        lambda r: (
            float(json.loads(r.stdout)["by_model"].get("mock-chat", {}).get("requests", 0))
            >= before + 1
        ),
    )
    table = cli(stack, "usage", "summary", "--start", start, "--end", end)
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if "mock-chat" in line)
    assert re.search(r"│\s+\d+\s+│\s+\d+\s+│", row)
    assert "total" in table.stdout


def test_gpu_status_and_watch_say_there_is_no_gpu_with_nvmls_reason(stack: Stack) -> None:
    reading = httpx.get(
        f"{stack.edge_url}/v1/admin/gpu/status",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    ).json()["status"]
    shown = cli(stack, "gpu", "status")
    assert shown.returncode == 0, shown.stderr
    watched = cli(stack, "gpu", "watch", "--count", "2", "--interval-ms", "200")
    assert watched.returncode == 0, watched.stderr
    lines = watched.stdout.splitlines()
    assert len(lines) == 2
    if reading["nvml_state"] == "NVML_STATE_UNAVAILABLE":
        expected = f"no GPU / NVML unavailable: {reading['reason']}"
        assert reading["reason"]
        assert expected in shown.stdout
        assert all(line.endswith(expected) for line in lines)
    else:  # a machine with a GPU shows its devices
        for device in reading["devices"]:
            assert device["name"] in shown.stdout


def test_errors_are_clear_and_exit_codes_say_what_kind(stack: Stack) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    unreachable = cli(stack, "models", "list", SWITCHBOARD_EDGE_URL=nowhere)
    assert unreachable.returncode == 3
    assert f"cannot reach the edge at {nowhere}" in unreachable.stderr
    assert "switchboard up" in unreachable.stderr

    no_admin = cli(stack, "models", "list", SWITCHBOARD_ADMIN_KEY=None)
    assert no_admin.returncode == 4
    assert "the admin API needs SWITCHBOARD_ADMIN_KEY" in no_admin.stderr
    wrong_admin = cli(stack, "keys", "list", "--admin-key", "not-the-key")
    assert wrong_admin.returncode == 4
    assert "Invalid admin key" in wrong_admin.stderr

    no_key = cli(stack, "chat", "hi", "-m", "mock-chat", SWITCHBOARD_API_KEY=None)
    assert no_key.returncode == 4
    assert "the edge needs an API key and none was given" in no_key.stderr
    assert "SWITCHBOARD_API_KEY" in no_key.stderr

    unknown = cli(stack, "models", "enable", "no-such-model")
    assert unknown.returncode == 1
    assert "no model named 'no-such-model'" in unknown.stderr
    assert "switchboard models list" in unknown.stderr
    twice = cli(stack, "models", "add", "mock-chat", "--provider", "mock", "--upstream-model", "x")
    assert twice.returncode == 1
    assert "already exists" in twice.stderr
    bad_provider = cli(
        stack, "models", "add", "orphan", "--provider", "nope", "--upstream-model", "x"
    )
    assert bad_provider.returncode == 1
    assert "the model was not added" in bad_provider.stderr
    listed = cli(stack, "models", "list", "--json")
    assert "orphan" not in [m["name"] for m in json.loads(listed.stdout)["models"]]

    usage_error = cli(stack, "usage", "summary", "--start", "2025-13-01")
    assert usage_error.returncode == 2
    assert "is not a date as YYYY-MM-DD" in usage_error.stderr


def _fresh_env(tmp: Path) -> dict[str, str]:
    """An environment for a stack of its own, on free ports (as the harness builds it)."""
    config = tmp / "switchboard.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "providers": [{"name": "mock", "kind": "mock"}],
                "models": [
                    {"name": "echo", "deployments": [{"provider": "mock", "model": "mock-echo"}]}
                ],
            }
        )
    )
    env = dict(os.environ)
    env.update(
        {
            "SWITCHBOARD_HOME": str(tmp / "home"),
            "SWITCHBOARD_CONFIG": str(config),
            "SWITCHBOARD_EDGE_PORT": str(free_port()),
            "SWITCHBOARD_EDGE_HOST": "127.0.0.1",
            "SWITCHBOARD_ENVOY_ADMIN_PORT": str(free_port()),
            "SWITCHBOARD_GRPC_PORT": str(free_port()),
            "KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        }
    )
    for name in SERVICES:
        if name != "router":
            env[f"SWITCHBOARD_{name.upper()}_PORT"] = str(free_port())
        env[f"SWITCHBOARD_{name.upper()}_METRICS_PORT"] = str(free_port())
    return env


def test_up_status_and_down_run_the_local_stack(tmp_path: Path) -> None:
    env = _fresh_env(tmp_path)
    try:
        up = run_cli(env, "up", timeout=150)
        assert up.returncode == 0, up.stdout + up.stderr
        for component in ("broker", "registry", "router", "envoy"):
            assert re.search(rf"{component}\s+ready", up.stdout), up.stdout
        assert f"http://127.0.0.1:{env['SWITCHBOARD_EDGE_PORT']}/v1" in up.stdout
        assert 'switchboard chat "hello" --model echo' in up.stdout
        assert run_cli(env, "up").returncode == 0  # already running: says so, exits 0

        assert run_cli(env, "status").returncode == 0
        chatted = run_cli(env, "chat", "hi", "--model", "echo")
        assert chatted.returncode == 0, chatted.stderr
        assert chatted.stdout.startswith("[mock]")

        down = run_cli(env, "down", timeout=90)
        assert down.returncode == 0, down.stderr
        assert "stopped envoy" in down.stdout
        stopped = run_cli(env, "status")
        assert stopped.returncode == 3
        assert "the stack is not running" in stopped.stderr
        again = run_cli(env, "down")
        assert again.returncode == 0
        assert "nothing is running" in again.stdout
        unreachable = run_cli(env, "chat", "hi", "--model", "echo")
        assert unreachable.returncode == 3
    finally:
        subprocess.run(
            [sys.executable, "-m", "switchboard_stack", "down"],
            env=env,
            cwd=REPO,
            capture_output=True,
            timeout=90,
            check=False,
        )
