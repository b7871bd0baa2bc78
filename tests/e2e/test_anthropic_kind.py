"""End to end: the official openai SDK → Envoy edge → router → provider → a
loopback server speaking Anthropic's Messages wire format, with tools, streamed
and not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from switchboard_stack.harness import Stack, running_stack
from tests.support.anthropic_upstream import AnthropicUpstream, Scripted
from tests.support.openai_upstream import run_in_thread

pytestmark = pytest.mark.e2e

ANTHROPIC_KEY = "sk-ant-e2e-test-only-key-0123456789"
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
QUESTION: Any = [{"role": "user", "content": "weather in Paris?"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[AnthropicUpstream]:
    with run_in_thread(AnthropicUpstream(api_key=ANTHROPIC_KEY)) as server:
        yield server


@pytest.fixture(scope="module")
def stack(upstream: AnthropicUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = {
        "providers": [
            {
                "name": "claude",
                "kind": "anthropic",
                "base_url": upstream.base_url,
                "api_key_env": "E2E_ANTHROPIC_KEY",
                "timeout_s": 2.0,
            }
        ],
        "models": [
            {"name": "claude-chat", "deployments": [{"provider": "claude", "model": "claude-up"}]}
        ],
    }
    env = {"E2E_ANTHROPIC_KEY": ANTHROPIC_KEY}
    with running_stack(config, tmp_path_factory.mktemp("stack"), env) as running:
        yield running


@pytest.fixture
def client(stack: Stack, upstream: AnthropicUpstream) -> Iterator[openai.OpenAI]:
    upstream.reset()
    with openai.OpenAI(base_url=f"{stack.edge_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_tool_call_and_its_result(client: openai.OpenAI, upstream: AnthropicUpstream) -> None:
    upstream.script(Scripted(tool_calls=[("get_weather", {"city": "Paris"})]))
    first = client.chat.completions.create(model="claude-chat", messages=QUESTION, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather",
        {"city": "Paris"},
    )
    assert first.model == "claude-chat"
    assert first.usage is not None
    assert first.usage.completion_tokens == upstream.served[-1].output_tokens

    upstream.script(Scripted(text="It is sunny in Paris."))
    messages = [
        *QUESTION,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    second = client.chat.completions.create(model="claude-chat", messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == "It is sunny in Paris."
    results = upstream.requests[-1].body["messages"][-1]["content"]
    assert results == [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]


def test_streamed_tool_call(client: openai.OpenAI, upstream: AnthropicUpstream) -> None:
    upstream.script(Scripted(text="Looking.", tool_calls=[("get_weather", {"city": "Oslo"})]))
    stream = client.chat.completions.create(
        model="claude-chat",
        messages=QUESTION,
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Looking."
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
    assert deltas[0].id
    assert deltas[0].function
    assert deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert json.loads(arguments) == {"city": "Oslo"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == upstream.served[-1].output_tokens
