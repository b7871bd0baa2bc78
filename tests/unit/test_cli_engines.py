"""`switchboard engines …` against a scripted edge: what each command sends, how
start follows its task to the end, and what it prints."""

from __future__ import annotations

import itertools
import json

import httpx
import pytest

from switchboard_cli.commands import engines
from switchboard_cli.exit_codes import CliError, ExitCode
from tests.unit.test_cli_commands import ScriptedContext, ScriptedEdge, args, ok

TASK = {"id": "t-1", "engine": "smol", "kind": "TASK_KIND_START"}


def test_create_sends_the_engine_config_with_the_api_names() -> None:
    script = ScriptedEdge({("POST", "/v1/admin/engines"): ok({"engine": {"name": "smol"}})})
    ctx = ScriptedContext(script)
    argv = ("engines", "create", "smol", "--framework", "llama.cpp", "--model-path", "/m.gguf")
    assert engines.create(args(*argv, "--threads", "2", "--gpu", "0"), ctx) == ExitCode.OK
    ((method, path, body),) = script.seen
    assert (method, path) == ("POST", "/v1/admin/engines")
    assert body == {
        "name": "smol",
        "config": {
            "framework": "ENGINE_FRAMEWORK_LLAMA_CPP",
            "model_path": "/m.gguf",
            "threads": 2,
            "gpus": ["0"],
        },
    }


def test_start_follows_its_task_until_it_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "POLL_S", 0)
    states = itertools.chain(["TASK_STATE_PENDING", "TASK_STATE_RUNNING"], itertools.repeat(""))

    def task(request: httpx.Request) -> httpx.Response:
        state = next(states) or "TASK_STATE_SUCCEEDED"
        body = {**TASK, "state": state, "engine_state": "ENGINE_STATE_RUNNING"}
        return httpx.Response(200, json={"task": body})

    script = ScriptedEdge(
        {
            ("POST", "/v1/admin/engines/smol:start"): ok({"task": TASK}),
            ("GET", "/v1/admin/engine-tasks/t-1"): task,
        }
    )
    ctx = ScriptedContext(script)
    assert engines.start(args("engines", "start", "smol"), ctx) == ExitCode.OK
    assert [p for _, p, _ in script.seen].count("/v1/admin/engine-tasks/t-1") == 3
    assert "smol is running" in ctx.stdout()


def test_a_failed_task_is_an_error_with_its_reason() -> None:
    failed = {**TASK, "state": "TASK_STATE_FAILED", "error": "did not become healthy in 1 s"}
    script = ScriptedEdge(
        {
            ("POST", "/v1/admin/engines/smol:stop"): ok({"task": TASK}),
            ("GET", "/v1/admin/engine-tasks/t-1"): ok({"task": failed}),
        }
    )
    ctx = ScriptedContext(script)
    with pytest.raises(CliError, match="did not become healthy"):
        engines.stop(args("engines", "stop", "smol", "--force"), ctx)
    assert script.seen[0][2] == {"force": True}


def test_logs_print_time_level_and_message_and_follow_asks_for_it() -> None:
    lines = [
        {"line": {"time": "2026-12-06T08:00:00Z", "level": "LOG_LEVEL_WARNING", "message": "slow"}},
        {"line": {"time": "2026-12-06T08:00:01Z", "level": "LOG_LEVEL_INFO", "message": "ok"}},
    ]
    queries: list[str] = []

    def stream(request: httpx.Request) -> httpx.Response:
        queries.append(request.url.query.decode())
        return httpx.Response(200, text=json.dumps(lines))

    script = ScriptedEdge({("GET", "/v1/admin/engines/smol/logs"): stream})
    ctx = ScriptedContext(script)
    assert engines.logs(args("engines", "logs", "smol", "-n", "2", "--follow"), ctx) == 0
    assert queries == ["lines=2&follow=true"]
    printed = ctx.stdout().splitlines()
    assert printed == ["2026-12-06T08:00:00Z WARN slow", "2026-12-06T08:00:01Z INFO ok"]


def test_list_shows_state_and_usage() -> None:
    engine = {
        "name": "smol",
        "config": {"framework": "ENGINE_FRAMEWORK_LLAMA_CPP"},
        "state": "ENGINE_STATE_RUNNING",
        "port": 4321,
        "pid": 99,
        "usage": {"rss_bytes": 200 * 2**20, "cpu_percent": 12.4},
        "restart_count": 1,
    }
    reply = {"engines": [engine], "active_models": 1, "max_concurrent_models": 4}
    script = ScriptedEdge({("GET", "/v1/admin/engines"): ok(reply)})
    ctx = ScriptedContext(script)
    assert engines.list_engines(args("engines", "list"), ctx) == ExitCode.OK
    out = ctx.stdout()
    for text in ("smol", "llama_cpp", "running", "4321", "200 MiB", "12%", "1 of 4"):
        assert text in out
