"""Tool calling on the `gemini` kind, through the router's gRPC API: OpenAI
tools, tool_choice, tool calls and tool messages as Gemini function
declarations, function calls and function responses, both ways and streamed."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import json_format

from switchboard.common.v1 import openai_pb2
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from tests.support.gemini_upstream import GeminiUpstream, Scripted
from tests.support.inprocess import services

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

GEMINI_KEY = "AIzaLoopbackTestOnlyKey00001"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather", "parameters": SCHEMA},
}
QUESTION = [{"role": "user", "content": "weather in Paris and Oslo?"}]


@pytest_asyncio.fixture
async def gemini_up() -> AsyncIterator[GeminiUpstream]:
    async with GeminiUpstream(api_key=GEMINI_KEY) as up:
        yield up


@pytest_asyncio.fixture
async def router(
    gemini_up: GeminiUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[router_pb2_grpc.RouterServiceAsyncStub]:
    monkeypatch.setenv("LOOPBACK_GEMINI_KEY", GEMINI_KEY)
    config = {
        "providers": [
            {
                "name": "gm",
                "kind": "gemini",
                "base_url": gemini_up.base_url,
                "api_key_env": "LOOPBACK_GEMINI_KEY",
                "timeout_s": 1.0,
            }
        ],
        "models": [{"name": "via-gemini", "deployments": [{"provider": "gm", "model": "up"}]}],
    }
    async with (
        services(config, tmp_path, monkeypatch) as settings,
        grpc.aio.insecure_channel(settings.address("router")) as channel,
    ):
        yield router_pb2_grpc.RouterServiceStub(channel)


def _chat(messages: list[dict[str, Any]], **extra: Any) -> Any:
    body = {"model": "via-gemini", "messages": messages, "tools": [WEATHER]}
    return json_format.ParseDict(body | extra, openai_pb2.ChatCompletionParams())


def _calls() -> Scripted:
    return Scripted(calls=[("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Oslo"})])


async def test_tool_calls_round_trip(
    router: router_pb2_grpc.RouterServiceAsyncStub, gemini_up: GeminiUpstream
) -> None:
    gemini_up.script(_calls())
    answer = await router.CreateChatCompletion(
        router_pb2.CreateChatCompletionRequest(params=_chat(QUESTION, tool_choice="required"))
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    # Only tool calls: OpenAI's content is null then.
    assert not choice.message.HasField("content")
    calls = list(choice.message.tool_calls)
    assert [(c.type, c.function.name) for c in calls] == [("function", "get_weather")] * 2
    assert [json.loads(c.function.arguments) for c in calls] == [
        {"city": "Paris"},
        {"city": "Oslo"},
    ]
    assert answer.usage.completion_tokens == gemini_up.served[-1].completion_tokens
    sent = gemini_up.requests[-1].body
    assert sent["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "The weather",
                    "parameters_json_schema": SCHEMA,
                }
            ]
        }
    ]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}

    follow_up = [
        *QUESTION,
        json_format.MessageToDict(choice.message, preserving_proto_field_name=True),
        {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny 21C"},
        {"role": "tool", "tool_call_id": calls[1].id, "content": '{"sky": "grey"}'},
    ]
    gemini_up.script(Scripted(text="Sunny in Paris, grey in Oslo."))
    answer = await router.CreateChatCompletion(
        router_pb2.CreateChatCompletionRequest(params=_chat(follow_up))
    )
    assert answer.choices[0].message.content == "Sunny in Paris, grey in Oslo."
    assert answer.choices[0].finish_reason == "stop"
    model_turn, results = gemini_up.requests[-1].body["contents"][1:]
    # The call Gemini signed goes back with its signature, which rode in the id.
    signature = base64.b64encode(b"signed-thought").decode()
    assert model_turn["role"] == "model"
    assert [p["functionCall"]["args"] for p in model_turn["parts"]] == [
        {"city": "Paris"},
        {"city": "Oslo"},
    ]
    assert [p.get("thoughtSignature") for p in model_turn["parts"]] == [signature, None]
    # Both results answer one turn of calls: one user content, named functions.
    assert results["role"] == "user"
    responses = [p["functionResponse"] for p in results["parts"]]
    assert [(r["name"], r["response"]) for r in responses] == [
        ("get_weather", {"output": "sunny 21C"}),
        ("get_weather", {"sky": "grey"}),
    ]
    assert [r["id"] for r in responses] == [p["functionCall"]["id"] for p in model_turn["parts"]]


async def test_streamed_tool_calls(
    router: router_pb2_grpc.RouterServiceAsyncStub, gemini_up: GeminiUpstream
) -> None:
    scripted = _calls()
    scripted.text = "checking two cities"
    gemini_up.script(scripted)
    params = _chat(QUESTION, stream_options={"include_usage": True})
    call = router.StreamChatCompletion(router_pb2.StreamChatCompletionRequest(params=params))
    chunks = [r.chunk async for r in call]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.delta.content for c in chunks for ch in c.choices)
    assert text == "checking two cities"
    deltas = [d for c in chunks for ch in c.choices for d in ch.delta.tool_calls]
    assert [(d.index, d.function.name) for d in deltas] == [(0, "get_weather"), (1, "get_weather")]
    assert [json.loads(d.function.arguments) for d in deltas] == [
        {"city": "Paris"},
        {"city": "Oslo"},
    ]
    assert all(d.id and d.type == "function" for d in deltas)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens == gemini_up.served[-1].completion_tokens


async def test_tool_choice_and_reasoning_effort(
    router: router_pb2_grpc.RouterServiceAsyncStub, gemini_up: GeminiUpstream
) -> None:
    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
        (
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
        ({"tool_choice": "none"}, {"mode": "NONE"}),
        ({"tool_choice": "auto"}, {"mode": "AUTO"}),
    ]
    for extra, expected in cases:
        await router.CreateChatCompletion(
            router_pb2.CreateChatCompletionRequest(params=_chat(QUESTION, **extra))
        )
        assert gemini_up.requests[-1].body["toolConfig"]["functionCallingConfig"] == expected
    await router.CreateChatCompletion(
        router_pb2.CreateChatCompletionRequest(params=_chat(QUESTION, reasoning_effort="low"))
    )
    config = gemini_up.requests[-1].body["generationConfig"]
    assert config["thinkingConfig"] == {"thinking_level": "LOW"}
