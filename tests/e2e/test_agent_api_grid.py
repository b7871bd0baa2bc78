"""A tool-calling conversation over every (input API x provider kind) pair,
streamed and not: Chat Completions, Messages and Responses in, to an
OpenAI-compatible, a Gemini and an Anthropic upstream. Each conversation is a
tool call, then the tool's result and the model's answer. Afterwards every
upstream call is in ClickHouse exactly once, with the surface it came through,
its tokens (cached and reasoning ones in their own columns) and its price.

The ground truth is what each loopback upstream itself served."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import clickhouse_connect
import httpx
import openai
import pytest

from switchboard_stack.harness import Stack, running_stack
from tests.conftest import eventually
from tests.e2e.agent_stack import ANTHROPIC_KEY, KEYS, MODELS, WEATHER_SCHEMA, config_and_env
from tests.support import anthropic_upstream, gemini_upstream, openai_upstream
from tests.support.anthropic_upstream import AnthropicUpstream
from tests.support.gemini_upstream import GeminiUpstream
from tests.support.openai_upstream import OpenAIUpstream, run_in_thread

pytestmark = [pytest.mark.e2e, pytest.mark.serial]

APIS = {"chat": "openai", "messages": "anthropic_messages", "responses": "openai_responses"}
ANSWER = "Sunny in Paris."
CACHED, REASONING = 3, 2
QUESTION = "weather in Paris?"
CHAT_TOOL: Any = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather", "parameters": WEATHER_SCHEMA},
}
# Nanos per token (pricing in agent_stack: 0.5, 0.05 and 1.5 per 1K).
INPUT_NANOS, CACHED_NANOS, OUTPUT_NANOS = 500_000, 50_000, 1_500_000


@dataclass
class Grid:
    stack: Stack
    openai: OpenAIUpstream
    gemini: GeminiUpstream
    anthropic: AnthropicUpstream
    closer: contextlib.ExitStack
    # (surface, model, stream, prompt, completion, cached, reasoning) per upstream call.
    expected: list[tuple[Any, ...]] = field(default_factory=list)


@pytest.fixture(scope="module")
def grid(
    upstream: OpenAIUpstream,
    gemini_upstream: GeminiUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Grid]:
    with contextlib.ExitStack() as closer:
        claude_up = closer.enter_context(run_in_thread(AnthropicUpstream(api_key=ANTHROPIC_KEY)))
        config, env = config_and_env(upstream, gemini_upstream, claude_up)
        stack = closer.enter_context(running_stack(config, tmp_path_factory.mktemp("grid"), env))
        # The last test closes the stack itself (to read ClickHouse); closing twice is a no-op.
        yield Grid(stack, upstream, gemini_upstream, claude_up, closer)


def _script(grid: Grid, kind: str) -> None:
    call = ("get_weather", {"city": "Paris"})
    if kind == "openai":
        grid.openai.script(
            openai_upstream.Scripted(
                tool_calls=[call], cached_tokens=CACHED, reasoning_tokens=REASONING
            ),
            openai_upstream.Scripted(text=ANSWER),
        )
    elif kind == "gemini":
        grid.gemini.script(
            gemini_upstream.Scripted(calls=[call]), gemini_upstream.Scripted(text=ANSWER)
        )
    else:
        grid.anthropic.script(
            anthropic_upstream.Scripted(tool_calls=[call]),
            anthropic_upstream.Scripted(text=ANSWER),
        )


def _served(grid: Grid, kind: str) -> list[tuple[int, int, int, int]]:
    """(prompt, completion, cached, reasoning) per completed upstream call, once
    both of the conversation's are: an upstream marks a call completed once its
    write returned, which can be after the client has read the answer."""
    upstreams = (grid.openai, grid.gemini, grid.anthropic)
    upstream = upstreams[["openai", "gemini", "anthropic"].index(kind)]
    eventually(
        lambda: sum(c.completed for c in upstream.served) >= 2,
        timeout=10,
        what=f"both {kind} calls completed",
    )
    if kind == "openai":
        calls = [c for c in grid.openai.served if c.completed]
        return [
            (c.prompt_tokens, c.completion_tokens, *((CACHED, REASONING) if i == 0 else (0, 0)))
            for i, c in enumerate(calls)
        ]
    if kind == "gemini":
        return [
            (c.prompt_tokens, c.completion_tokens, 0, 0) for c in grid.gemini.served if c.completed
        ]
    return [
        (c.prompt_tokens, c.output_tokens, c.cache_read_input_tokens, 0)
        for c in grid.anthropic.served
        if c.completed
    ]


def _chat(client: openai.OpenAI, model: str, stream: bool) -> str:
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    if not stream:
        first = client.chat.completions.create(model=model, messages=messages, tools=[CHAT_TOOL])
        [call] = first.choices[0].message.tool_calls or []
        call_id, name, arguments = call.id, call.function.name, call.function.arguments  # type: ignore[union-attr]
    else:
        chunks = list(
            client.chat.completions.create(
                model=model, messages=messages, tools=[CHAT_TOOL], stream=True
            )
        )
        deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
        call_id, name = deltas[0].id or "", deltas[0].function.name or ""  # type: ignore[union-attr]
        arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert (name, json.loads(arguments)) == ("get_weather", {"city": "Paris"})
    messages += [
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "sunny"},
    ]
    if not stream:
        second = client.chat.completions.create(model=model, messages=messages, tools=[CHAT_TOOL])
        return second.choices[0].message.content or ""
    chunks = list(
        client.chat.completions.create(
            model=model, messages=messages, tools=[CHAT_TOOL], stream=True
        )
    )
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def _messages(client: anthropic.Anthropic, model: str, stream: bool) -> str:
    tool: Any = {"name": "get_weather", "input_schema": WEATHER_SCHEMA}
    turns: list[Any] = [{"role": "user", "content": QUESTION}]

    def ask() -> anthropic.types.Message:
        if not stream:
            return client.messages.create(model=model, max_tokens=100, messages=turns, tools=[tool])
        with client.messages.stream(model=model, max_tokens=100, messages=turns, tools=[tool]) as s:
            return s.get_final_message()

    first = ask()
    assert first.stop_reason == "tool_use"
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert use.input == {"city": "Paris"}
    turns += [
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
        },
    ]
    second = ask()
    return "".join(b.text for b in second.content if b.type == "text")


def _responses(client: openai.OpenAI, model: str, stream: bool) -> str:
    tool: Any = {"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA}

    def ask(**kwargs: Any) -> Any:
        if not stream:
            return client.responses.create(model=model, tools=[tool], **kwargs)
        with client.responses.stream(model=model, tools=[tool], **kwargs) as s:
            return s.get_final_response()

    first = ask(input=QUESTION)
    [call] = [item for item in first.output if item.type == "function_call"]
    assert json.loads(call.arguments) == {"city": "Paris"}
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
    second = ask(input=[output], previous_response_id=first.id)
    return str(second.output_text)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("kind", ["openai", "gemini", "anthropic"])
@pytest.mark.parametrize("api", list(APIS))
def test_tool_conversation(grid: Grid, api: str, kind: str, stream: bool) -> None:
    for up in (grid.openai, grid.gemini, grid.anthropic):
        up.reset()
    _script(grid, kind)
    base, key, model = grid.stack.edge_url, KEYS["team-a"], MODELS[kind]
    if api == "messages":
        with anthropic.Anthropic(base_url=base, api_key=key, max_retries=0) as claude:
            answer = _messages(claude, model, stream)
    else:
        with openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0) as client:
            answer = (_chat if api == "chat" else _responses)(client, model, stream)
    assert answer == ANSWER
    served = _served(grid, kind)
    assert len(served) == 2
    grid.expected += [(APIS[api], model, stream, *tokens) for tokens in served]


def test_usage_exact_in_clickhouse(grid: Grid) -> None:
    """Runs last: every conversation above, each upstream call once, priced."""
    assert len(grid.expected) == 2 * len(APIS) * len(MODELS) * 2, "run with the whole grid"

    eventually(lambda: _summary_requests(grid) >= len(grid.expected), timeout=30)
    grid.closer.close()
    ledger = clickhouse_connect.get_client(dsn=f"chdb://{grid.stack.home / 'clickhouse'}")
    try:
        rows = ledger.query(
            "SELECT surface, model, stream, prompt_tokens, completion_tokens, cached_tokens,"
            " reasoning_tokens, input_cost_nanos, output_cost_nanos, key_name, status"
            " FROM switchboard.usage_events FINAL"
        ).result_rows
    finally:
        ledger.close()
    expected = [
        (
            *row,
            (row[3] - row[5]) * INPUT_NANOS + row[5] * CACHED_NANOS,
            row[4] * OUTPUT_NANOS,
            "team-a",
            "ok",
        )
        for row in grid.expected
    ]
    assert sorted(tuple(r) for r in rows) == sorted(expected)


def _summary_requests(grid: Grid) -> int:
    today = dt.datetime.now(dt.UTC).date().isoformat()
    reply = httpx.get(
        f"{grid.stack.edge_url}/v1/usage/summary",
        params={"start": today, "end": today},
        headers={"authorization": f"Bearer {KEYS['team-a']}"},
    )
    reply.raise_for_status()
    return int(reply.json()["total_requests"])
