"""The commands against a scripted edge (httpx.MockTransport): what they send, what
they print, and how they fail: `models add` never leaves a half-made model behind,
`gpu watch` stops after --count and says when the stream ends."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx2
import openai
import pytest
from rich.console import Console
from rich.progress import Progress

from switchboard_cli.commands import chat, gpu, keys, models, stack, usage
from switchboard_cli.context import Context
from switchboard_cli.edge import Edge
from switchboard_cli.exit_codes import CliError, ExitCode
from switchboard_cli.parser import build_parser
from switchboard_cli.target import Target
from switchboard_stack.components import Component

EDGE = "http://edge.test"


@dataclass
class ScriptedEdge:
    """Answers by (method, path); records every request with its JSON body."""

    answers: dict[tuple[str, str], Callable[[httpx.Request], httpx.Response]]
    seen: list[tuple[str, str, Any]] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content) if request.content else None
        # The path as sent, still percent-encoded (a name may hold '/').
        path = request.url.raw_path.decode().partition("?")[0]
        self.seen.append((request.method, path, sent))
        answer = self.answers.get((request.method, path))
        if answer is None:
            return httpx.Response(
                404, json={"error": {"message": "unknown", "code": "unknown_url"}}
            )
        return answer(request)


class ScriptedContext(Context):
    def __init__(self, script: ScriptedEdge, json_mode: bool = False) -> None:
        super().__init__(
            out=Console(file=io.StringIO(), width=200, color_system=None),
            err=Console(file=io.StringIO(), width=200, color_system=None),
            target=Target(edge_url=EDGE, admin_key="adm"),
            json=json_mode,
        )
        self.script = script

    def edge(self) -> Edge:
        transport = httpx.MockTransport(self.script)
        return Edge(self.target, httpx.Client(base_url=EDGE, transport=transport))

    def stdout(self) -> str:
        assert isinstance(self.out.file, io.StringIO)
        return self.out.file.getvalue()


def ok(payload: dict[str, Any]) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(200, json=payload)


def fail(
    status: int, message: str, param: str | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    error = {"message": message, "type": "x", "code": "x", "param": param}
    return lambda request: httpx.Response(status, json={"error": error})


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


ADD = ("models", "add", "llama-3", "--provider", "vllm", "--upstream-model", "meta/L3")
MODEL = {"name": "llama-3", "online": True, "kind": "MODEL_KIND_CHAT", "deployments": []}


def test_models_add_creates_offline_deploys_then_goes_online() -> None:
    script = ScriptedEdge(
        {
            ("POST", "/v1/admin/models"): ok({"model": {**MODEL, "online": False}}),
            ("POST", "/v1/admin/models/llama-3/deployments"): ok({"deployment": {}}),
            ("PATCH", "/v1/admin/models/llama-3"): ok({"model": MODEL}),
        }
    )
    ctx = ScriptedContext(script)
    argv = (*ADD, "--alias", "l3", "--tag", "local", "--description", "d", "--input-per-1k", "0.1")
    assert models.add(args(*argv), ctx) == ExitCode.OK
    assert script.seen == [
        (
            "POST",
            "/v1/admin/models",
            {
                "name": "llama-3",
                "kind": "MODEL_KIND_CHAT",
                "online": False,
                "aliases": ["l3"],
                "tags": ["local"],
                "description": "d",
                "pricing": {"input_per_1k": 0.1},
            },
        ),
        (
            "POST",
            "/v1/admin/models/llama-3/deployments",
            {"provider": "vllm", "upstream_model": "meta/L3"},
        ),
        ("PATCH", "/v1/admin/models/llama-3", {"online": True}),
    ]
    assert "added model llama-3, online" in ctx.stdout()


def test_models_add_sends_a_kinds_unit_price_and_default_parameters() -> None:
    pricing = {"per_search_unit": 0.002, "currency": "EUR"}
    rerank = {**MODEL, "kind": "MODEL_KIND_RERANK", "pricing": pricing}
    script = ScriptedEdge(
        {
            ("POST", "/v1/admin/models"): ok({"model": rerank}),
            ("POST", "/v1/admin/models/llama-3/deployments"): ok({"deployment": {}}),
            ("PATCH", "/v1/admin/models/llama-3"): ok({"model": rerank}),
        }
    )
    ctx = ScriptedContext(script)
    price = ("--per-search-unit", "0.002", "--currency", "EUR")
    defaults = ("--default-temperature", "0.2", "--default-max-tokens", "128")
    argv = (*ADD, "--kind", "rerank", *price, *defaults)
    assert models.add(args(*argv), ctx) == ExitCode.OK
    created = script.seen[0][2]
    assert created["kind"] == "MODEL_KIND_RERANK"
    assert created["pricing"] == {"per_search_unit": 0.002, "currency": "EUR"}
    assert created["default_parameters"] == {"temperature": 0.2, "max_tokens": 128}
    # Its price shows in its own unit.
    assert "0.002/search unit EUR" in ctx.stdout()


def test_models_defaults_lists_every_use_set_or_not() -> None:
    script = ScriptedEdge(
        {
            ("GET", "/v1/admin/defaults"): ok(
                {
                    "defaults": [
                        {"use": "MODEL_USE_CHAT", "model": "llama-3"},
                        {"use": "MODEL_USE_RERANK", "model": "bge-rerank"},
                    ]
                }
            )
        }
    )
    ctx = ScriptedContext(script)
    assert models.defaults(args("models", "defaults"), ctx) == ExitCode.OK
    lines = ctx.stdout().splitlines()
    assert any("chat" in line and "llama-3" in line for line in lines)
    assert any("rerank" in line and "bge-rerank" in line for line in lines)
    assert any("tts" in line and "not set" in line for line in lines)
    json_ctx = ScriptedContext(script, json_mode=True)
    assert models.defaults(args("models", "defaults"), json_ctx) == ExitCode.OK
    assert json.loads(json_ctx.stdout())["defaults"][1]["model"] == "bge-rerank"


def test_models_add_offline_stays_offline() -> None:
    script = ScriptedEdge(
        {
            ("POST", "/v1/admin/models"): ok({"model": MODEL}),
            ("POST", "/v1/admin/models/llama-3/deployments"): ok({"deployment": {}}),
            ("GET", "/v1/admin/models/llama-3"): ok({"model": {**MODEL, "online": False}}),
        }
    )
    assert models.add(args(*ADD, "--offline"), ScriptedContext(script)) == ExitCode.OK
    assert [m for m, _, _ in script.seen] == ["POST", "POST", "GET"]


def test_a_refused_deployment_removes_the_model_again() -> None:
    script = ScriptedEdge(
        {
            ("POST", "/v1/admin/models"): ok({"model": MODEL}),
            ("POST", "/v1/admin/models/llama-3/deployments"): fail(
                400, "deployment.provider: no provider named 'vllm'", "deployment.provider"
            ),
            ("DELETE", "/v1/admin/models/llama-3"): ok({}),
        }
    )
    with pytest.raises(CliError) as raised:
        models.add(args(*ADD), ScriptedContext(script))
    assert raised.value.code == ExitCode.FAILED
    assert raised.value.message.endswith("; the model was not added")
    assert "--provider 'vllm'" in (raised.value.hint or "")
    assert script.seen[-1][:2] == ("DELETE", "/v1/admin/models/llama-3")


def test_an_existing_model_is_a_conflict_and_nothing_else_is_sent() -> None:
    script = ScriptedEdge(
        {("POST", "/v1/admin/models"): fail(409, "model 'llama-3' already exists", "name")}
    )
    with pytest.raises(CliError) as raised:
        models.add(args(*ADD), ScriptedContext(script))
    assert raised.value.code == ExitCode.FAILED
    assert "already exists (HTTP 409" in raised.value.message
    assert len(script.seen) == 1


def test_models_list_sends_the_filters_as_the_api_names_them() -> None:
    queries: list[dict[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        queries.append(dict(request.url.params))
        return httpx.Response(200, json={"models": [MODEL], "next_page_token": ""})

    script = ScriptedEdge({("GET", "/v1/admin/models"): answer})
    ctx = ScriptedContext(script)
    argv = (
        "models",
        "list",
        "--status",
        "offline",
        "--tag",
        "t",
        "--provider",
        "p",
        "--kind",
        "chat",
    )
    assert models.list_models(args(*argv), ctx) == ExitCode.OK
    assert queries[0]["status"] == "ONLINE_FILTER_OFFLINE"
    assert queries[0]["kind"] == "MODEL_KIND_CHAT"
    assert (queries[0]["tag"], queries[0]["provider"]) == ("t", "p")
    assert "llama-3" in ctx.stdout()
    assert "1 model(s), 1 online" in ctx.stdout()


def test_models_enable_and_disable_patch_online() -> None:
    script = ScriptedEdge({("PATCH", "/v1/admin/models/m%2Fx"): ok({"model": MODEL})})
    ctx = ScriptedContext(script)
    assert models.disable(args("models", "disable", "m/x"), ctx) == ExitCode.OK
    assert models.enable(args("models", "enable", "m/x"), ctx) == ExitCode.OK
    assert [body for _, _, body in script.seen] == [{"online": False}, {"online": True}]
    assert "is offline" in ctx.stdout()


def test_keys_create_sends_only_what_was_given_and_json_mode_keeps_the_reply() -> None:
    reply = {"key": {"name": "team-a"}, "secret": "sb-secret"}
    script = ScriptedEdge({("POST", "/v1/admin/keys"): ok(reply)})
    ctx = ScriptedContext(script, json_mode=True)
    argv = ("keys", "create", "team-a", "--model", "m", "--rpm", "60")
    assert keys.create(args(*argv), ctx) == ExitCode.OK
    assert script.seen[0][2] == {"name": "team-a", "models": ["m"], "rpm": 60}
    assert json.loads(ctx.stdout()) == reply


def test_keys_revoke_uses_the_revoke_verb() -> None:
    script = ScriptedEdge({("POST", "/v1/admin/keys/team-a:revoke"): ok({"key": {}})})
    assert keys.revoke(args("keys", "revoke", "team-a"), ScriptedContext(script)) == ExitCode.OK
    assert script.seen == [("POST", "/v1/admin/keys/team-a:revoke", {})]


def test_usage_summary_dates_and_validation() -> None:
    queries: list[dict[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        queries.append(dict(request.url.params))
        return httpx.Response(200, json={"period": {"start": "2025-01-01", "end": "2025-01-02"}})

    script = ScriptedEdge({("GET", "/v1/usage/summary"): answer})
    ctx = ScriptedContext(script)
    argv = ("usage", "summary", "--start", "2025-01-01", "--end", "2025-01-02", "--model", "m")
    assert usage.summary(args(*argv), ctx) == ExitCode.OK
    assert queries == [{"start": "2025-01-01", "end": "2025-01-02", "model": "m"}]
    with pytest.raises(CliError) as raised:
        usage.summary(args("usage", "summary", "--start", "2025-01-02", "--end", "2025-01-01"), ctx)
    assert raised.value.code == ExitCode.USAGE
    with pytest.raises(CliError):
        usage.summary(args("usage", "summary", "--end", "2025-01-01"), ctx)


NO_GPU = {"hostname": "vm", "nvml_state": "NVML_STATE_UNAVAILABLE", "reason": "no driver"}


def watch_stream(body: str) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(200, content=body.encode())


def test_gpu_watch_prints_a_line_per_sample_and_stops_at_count() -> None:
    samples = ",".join(json.dumps({"metrics_update": NO_GPU}) for _ in range(5))
    script = ScriptedEdge({("GET", "/v1/admin/gpu/watch"): watch_stream(f"[{samples}")})
    ctx = ScriptedContext(script)
    assert gpu.watch(args("gpu", "watch", "--count", "2"), ctx) == ExitCode.OK
    lines = ctx.stdout().splitlines()
    assert len(lines) == 2
    assert all(line.endswith("no GPU / NVML unavailable: no driver") for line in lines)


def test_gpu_watch_says_when_the_service_ends_the_stream() -> None:
    body = "[" + json.dumps({"metrics_update": NO_GPU}) + "]"
    script = ScriptedEdge({("GET", "/v1/admin/gpu/watch"): watch_stream(body)})
    with pytest.raises(CliError, match="ended the watch"):
        gpu.watch(args("gpu", "watch"), ScriptedContext(script))


def test_gpu_watch_json_is_one_object_per_line() -> None:
    alert = {"alert": {"rule_name": "hot", "state": "ALERT_STATE_FIRING"}}
    body = "[" + ",".join(
        json.dumps(e) for e in ({"metrics_update": NO_GPU}, alert, {"metrics_update": NO_GPU})
    )
    script = ScriptedEdge({("GET", "/v1/admin/gpu/watch"): watch_stream(body)})
    ctx = ScriptedContext(script, json_mode=True)
    assert (
        gpu.watch(args("gpu", "watch", "--count", "2", "--interval-ms", "250"), ctx) == ExitCode.OK
    )
    events = [json.loads(line) for line in ctx.stdout().splitlines()]
    assert events[1] == alert
    assert len(events) == 3
    assert script.seen[0][1] == "/v1/admin/gpu/watch"


def test_gpu_watch_state_keeps_recent_alerts_newest_first() -> None:
    state = gpu.WatchState()
    assert state.apply({"metrics_update": NO_GPU})
    for i in range(gpu.RECENT_ALERTS + 3):
        assert not state.apply({"alert": {"rule_name": f"r{i}"}})
    assert state.samples == 1
    assert len(state.alerts) == gpu.RECENT_ALERTS
    assert state.alerts[0]["rule_name"] == f"r{gpu.RECENT_ALERTS + 2}"


def test_gpu_status_shows_no_gpu_with_the_reason() -> None:
    script = ScriptedEdge(
        {("GET", "/v1/admin/gpu/status"): ok({"status": NO_GPU, "active_alerts": []})}
    )
    ctx = ScriptedContext(script)
    assert gpu.status(args("gpu", "status"), ctx) == ExitCode.OK
    assert "no GPU / NVML unavailable: no driver" in ctx.stdout()


def test_the_up_board_follows_each_components_readiness_probe() -> None:
    answers = iter([False, True])

    async def probe() -> bool:
        return next(answers)

    component = Component("registry", ["true"], probe, stage=1)
    progress = Progress(console=Console(file=io.StringIO()))
    board = stack.ReadyBoard(progress, [component, Component("router", ["true"], probe, stage=2)])
    watched = board.watch(component)

    async def run() -> list[bool]:
        return [await watched.ready(), await watched.ready()]

    assert asyncio.run(run()) == [False, True]
    assert board.started == {"registry"}
    assert board.ready == {"registry"}
    task = progress.tasks[board.tasks["registry"]]
    assert task.finished
    assert task.fields["state"] == "[green]ready"
    board.failed()
    assert progress.tasks[board.tasks["router"]].fields["state"] == "[dim]not started"


def _sse(*events: dict[str, Any]) -> bytes:
    return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"


def _chunk(text: str | None, usage: dict[str, int] | None = None) -> dict[str, Any]:
    choices = [] if text is None else [{"index": 0, "delta": {"content": text}}]
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "mock-chat",
        "choices": choices,
        "usage": usage,
    }


def _sdk(body: bytes, seen: list[dict[str, Any]]) -> openai.OpenAI:
    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})

    transport = httpx2.MockTransport(handler)
    return openai.OpenAI(
        base_url=f"{EDGE}/v1",
        api_key="k",
        max_retries=0,
        http_client=httpx2.Client(transport=transport),
    )


def test_chat_writes_each_piece_as_it_arrives_and_the_tokens_to_stderr() -> None:
    seen: list[dict[str, Any]] = []
    usage_chunk = _chunk(None, {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5})
    client = _sdk(_sse(_chunk("[mock] "), _chunk("hel"), _chunk("lo"), usage_chunk), seen)
    ctx = ScriptedContext(ScriptedEdge({}))
    parsed = args("chat", "hello", "-m", "mock-chat", "--max-tokens", "5")
    chat._stream(client, parsed, chat._messages(parsed), ctx)
    assert ctx.stdout() == "[mock] hello\n"
    assert isinstance(ctx.err.file, io.StringIO)
    assert ctx.err.file.getvalue().strip() == "mock-chat · 2 prompt + 3 completion tokens"
    assert seen[0]["stream"] is True
    assert seen[0]["stream_options"] == {"include_usage": True}
    assert seen[0]["max_tokens"] == 5
    assert "temperature" not in seen[0]


def test_an_error_event_midway_keeps_what_arrived_and_raises() -> None:
    import openai

    from switchboard_cli.commands import chat

    broken = {"error": {"message": "upstream reset", "type": "api_error", "code": "upstream_error"}}
    client = _sdk(_sse(_chunk("[mock] par"), broken), [])
    ctx = ScriptedContext(ScriptedEdge({}))
    parsed = args("chat", "hello", "-m", "mock-chat")
    with pytest.raises(openai.APIError) as raised:
        chat._stream(client, parsed, chat._messages(parsed), ctx)
    assert ctx.stdout() == "[mock] par\n"
    mapped = chat.sdk_error(raised.value, EDGE, 120, had_key=True)
    assert mapped.message == "the answer broke off: upstream reset"


def test_up_refuses_ports_that_something_else_holds() -> None:
    ports = [("the edge (SWITCHBOARD_EDGE_PORT)", "127.0.0.1", 8080), ("x", "127.0.0.1", 1)]
    stack.check_ports_free(ports, is_listening=lambda host, port: False)
    with pytest.raises(CliError) as raised:
        stack.check_ports_free(ports, is_listening=lambda host, port: port == 8080)
    assert raised.value.code == ExitCode.FAILED
    assert raised.value.message == "1 port(s) the stack needs are in use"
    assert raised.value.detail == "127.0.0.1:8080 the edge (SWITCHBOARD_EDGE_PORT)"


def test_the_ports_up_checks_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from switchboard_common.settings import Settings

    monkeypatch.setenv("SWITCHBOARD_EDGE_PORT", "18080")
    monkeypatch.setenv("SWITCHBOARD_GPU_PORT", "18055")
    monkeypatch.setenv("SWITCHBOARD_GPU_METRICS_PORT", "0")
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "kafka.example.com:9092")
    ports = {port: what for what, _, port in stack.wanted_ports(Settings.from_env())}
    assert "SWITCHBOARD_EDGE_PORT" in ports[18080]
    assert ports[18055] == "the gpu service (SWITCHBOARD_GPU_PORT)"
    assert not any("broker" in what for what in ports.values())  # a remote broker is not ours
    assert not any("gpu metrics" in what for what in ports.values())  # 0: metrics off
