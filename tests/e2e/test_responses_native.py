"""/v1/responses passed through natively to an upstream that has its own
Responses API (provider option `responses: native`), with the official openai
SDK through the edge: the upstream gets the Responses request (the stored
conversation expanded into input items, store false) and its answer and events
come back as it sent them, reasoning items included, which a chat mapping could
not carry. Fallback to a provider without the API, mid-conversation, and the
ledger in ClickHouse are checked too."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import clickhouse_connect
import httpx
import openai
import pytest
from openai.types.responses import ResponseFunctionToolCall, ResponseReasoningItem

from switchboard_stack.harness import Stack, running_stack
from tests.conftest import GEMINI_UPSTREAM_KEY, UPSTREAM_KEY, eventually
from tests.e2e.agent_stack import KEYS, WEATHER_SCHEMA
from tests.support import gemini_upstream as gemini_loop
from tests.support.gemini_upstream import GeminiUpstream
from tests.support.openai_responses import DEFAULT_REASONING_TOKENS as DEFAULT_REASONING
from tests.support.openai_upstream import Behaviour, OpenAIUpstream, Scripted

pytestmark = pytest.mark.e2e

NATIVE = "gpt-native"
GEMINI = "gemini-plain"
UPSTREAM_MODEL = "native-up"
FUNCTION_TOOL: Any = {"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA}
# Nanos per token (1 USD = 1e9 nanos): input 0.5, cached 0.05, output 1.5 USD per 1k.
INPUT_NANOS, CACHED_NANOS, OUTPUT_NANOS = 500_000, 50_000, 1_500_000


@dataclass
class Native:
    stack: Stack
    upstream: OpenAIUpstream
    gemini: GeminiUpstream
    closer: contextlib.ExitStack
    # (stream, prompt, completion, cached, reasoning) per native upstream call.
    expected: list[tuple[Any, ...]] = field(default_factory=list)
    requests: int = 0

    def served(self, stream: bool, cached: int = 0, reasoning: int = DEFAULT_REASONING) -> None:
        """Expect the upstream's last call in the ledger, as it counted it."""
        call = self.upstream.served[-1]
        assert call.endpoint == "responses"
        # The upstream marks a call reported once its write returned, which can be
        # after the client has read the answer.
        self.upstream.wait_until(lambda: call.usage_reported, within_s=10)
        assert call.usage_reported
        self.expected.append(
            (stream, call.prompt_tokens, call.completion_tokens, cached, reasoning)
        )


@pytest.fixture(scope="module")
def native(
    upstream: OpenAIUpstream,
    gemini_upstream: GeminiUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Native]:
    pricing = {"input_per_1k": 0.5, "output_per_1k": 1.5, "cached_input_per_1k": 0.05}
    config: dict[str, Any] = {
        "providers": [
            {
                "name": "loop-native",
                "kind": "openai",
                "base_url": upstream.base_url,
                "api_key_env": "NATIVE_OPENAI_KEY",
                "timeout_s": 5.0,
                "options": {"responses": "native"},
            },
            {
                "name": "loop-gemini",
                "kind": "gemini",
                "base_url": gemini_upstream.base_url,
                "api_key_env": "NATIVE_GEMINI_KEY",
                "timeout_s": 5.0,
            },
        ],
        "models": [
            {
                "name": NATIVE,
                "deployments": [{"provider": "loop-native", "model": UPSTREAM_MODEL}],
                "fallbacks": [GEMINI],
                "pricing": {**pricing, "currency": "USD"},
            },
            {
                "name": GEMINI,
                "deployments": [{"provider": "loop-gemini", "model": "gemini-up"}],
                "pricing": {**pricing, "currency": "USD"},
            },
        ],
        "keys": [{"name": "team-a", "key_env": "NATIVE_TEAM_A"}],
    }
    env = {
        "NATIVE_OPENAI_KEY": UPSTREAM_KEY,
        "NATIVE_GEMINI_KEY": GEMINI_UPSTREAM_KEY,
        "NATIVE_TEAM_A": KEYS["team-a"],
    }
    with contextlib.ExitStack() as closer:
        stack = closer.enter_context(running_stack(config, tmp_path_factory.mktemp("native"), env))
        # The last test closes the stack itself (to read ClickHouse).
        yield Native(stack, upstream, gemini_upstream, closer)


@pytest.fixture
def oai(native: Native) -> Iterator[openai.OpenAI]:
    native.upstream.reset()
    native.gemini.reset()
    with openai.OpenAI(
        base_url=f"{native.stack.edge_url}/v1", api_key=KEYS["team-a"], max_retries=0
    ) as client:
        yield client


def test_create_passes_through_natively(native: Native, oai: openai.OpenAI) -> None:
    answer = oai.responses.create(
        model=NATIVE, input="hello there", tools=[FUNCTION_TOOL], instructions="Be brief."
    )
    [request] = native.upstream.requests
    assert request.path == "/v1/responses"
    sent: Any = request.json
    assert sent["store"] is False
    # With nothing stored upstream, reasoning can only be sent back encrypted.
    assert sent["include"] == ["reasoning.encrypted_content"]
    assert "previous_response_id" not in sent
    assert sent["instructions"] == "Be brief."
    assert sent["tools"] == [FUNCTION_TOOL]
    assert sent["input"] == [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "hello there"}],
        }
    ]
    # The upstream's own output, reasoning item first (a chat mapping has none).
    assert [item.type for item in answer.output] == ["reasoning", "message"]
    reasoning = answer.output[0]
    assert isinstance(reasoning, ResponseReasoningItem)
    # Kept here for the conversation; shown only to a client whose include asks.
    assert reasoning.encrypted_content is None
    assert answer.output_text == "echo: hello there"
    # The response is ours: our id, the model name asked for.
    assert answer.id.startswith("resp_")
    assert answer.model == NATIVE
    assert answer.usage is not None
    assert answer.usage.output_tokens == native.upstream.served[-1].completion_tokens
    assert answer.usage.output_tokens_details.reasoning_tokens == 2
    assert oai.responses.retrieve(answer.id).output_text == "echo: hello there"
    native.served(stream=False)
    native.requests += 1


def test_a_tool_conversation_continues_natively(native: Native, oai: openai.OpenAI) -> None:
    native.upstream.script(
        Scripted(
            tool_calls=[("get_weather", {"city": "Paris"})], cached_tokens=4, reasoning_tokens=5
        ),
        Scripted(text="Sunny in Paris."),
    )
    first = oai.responses.create(
        model=NATIVE,
        input="weather in Paris?",
        tools=[FUNCTION_TOOL],
        include=["reasoning.encrypted_content"],
    )
    native.served(stream=False, cached=4, reasoning=5)
    reasoning, call = first.output
    assert isinstance(reasoning, ResponseReasoningItem)
    assert reasoning.encrypted_content  # asked for
    assert isinstance(call, ResponseFunctionToolCall)
    second = oai.responses.create(
        model=NATIVE,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[FUNCTION_TOOL],
    )
    native.served(stream=False, reasoning=0)
    native.requests += 2
    assert second.output_text == "Sunny in Paris."
    assert second.previous_response_id == first.id
    second_reasoning = second.output[0]
    assert isinstance(second_reasoning, ResponseReasoningItem)
    assert second_reasoning.encrypted_content is None  # not asked for this time
    # The whole conversation went up as items, the upstream's reasoning item
    # with its id and encrypted content, as the Responses API needs it back.
    sent: Any = native.upstream.requests[-1].json
    assert [item["type"] for item in sent["input"]] == [
        "message",
        "reasoning",
        "function_call",
        "function_call_output",
    ]
    assert sent["input"][1]["id"] == reasoning.id
    assert sent["input"][1]["encrypted_content"] == reasoning.encrypted_content
    assert sent["input"][2]["call_id"] == call.call_id
    assert "id" not in sent["input"][2]


def test_stream_passes_the_upstreams_events(native: Native, oai: openai.OpenAI) -> None:
    native.upstream.script(
        Scripted(text="Let me look.", tool_calls=[("get_weather", {"city": "Oslo"})])
    )
    with oai.responses.stream(
        model=NATIVE, input="weather in Oslo?", tools=[FUNCTION_TOOL]
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    native.served(stream=True, reasoning=0)
    native.requests += 1
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "response.function_call_arguments.delta" in kinds
    # Every event the upstream sent, in its order and numbering.
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert {e.response.id for e in events if hasattr(e, "response")} == {final.id}
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call"]
    assert final.model == NATIVE
    [call] = [item for item in final.output if item.type == "function_call"]
    assert json.loads(call.arguments) == {"city": "Oslo"}
    # Stored before the last event went out: readable at once.
    assert oai.responses.retrieve(final.id).output_text == "Let me look."


def test_fallback_mid_conversation_to_a_provider_without_the_api(
    native: Native, oai: openai.OpenAI
) -> None:
    native.upstream.behaviour = Behaviour(mode="status", status=503)
    native.gemini.script(gemini_loop.Scripted(calls=[("get_weather", {"city": "Rome"})]))
    first = oai.responses.create(model=NATIVE, input="weather in Rome?", tools=[FUNCTION_TOOL])
    # Gemini answered, through the chat mapping: no reasoning item.
    [call] = first.output
    assert isinstance(call, ResponseFunctionToolCall)
    assert native.gemini.requests, "the fallback was not asked"
    native.upstream.behaviour = Behaviour()
    native.upstream.script(Scripted(text="Warm in Rome."))
    second = oai.responses.create(
        model=NATIVE,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "warm"}],
        tools=[FUNCTION_TOOL],
    )
    native.served(stream=False, reasoning=0)
    native.requests += 2
    assert second.output_text == "Warm in Rome."
    sent: Any = native.upstream.requests[-1].json
    assert [item["type"] for item in sent["input"]] == [
        "message",
        "function_call",
        "function_call_output",
    ]
    assert sent["input"][1]["call_id"] == call.call_id


def test_usage_exact_in_clickhouse(native: Native) -> None:
    """Runs last: every native call above once, its cached and reasoning tokens
    in their own columns, priced."""
    assert len(native.expected) == 5, "run with the whole module"
    eventually(lambda: _requests_counted(native) >= native.requests, timeout=30)
    native.closer.close()
    ledger = clickhouse_connect.get_client(dsn=f"chdb://{native.stack.home / 'clickhouse'}")
    try:
        rows = ledger.query(
            "SELECT surface, model, stream, prompt_tokens, completion_tokens, cached_tokens,"
            " reasoning_tokens, input_cost_nanos, output_cost_nanos, status"
            " FROM switchboard.usage_events FINAL WHERE provider = 'loop-native'"
            " AND status = 'ok'"
        ).result_rows
    finally:
        ledger.close()
    expected = [
        (
            "openai_responses",
            NATIVE,
            stream,
            prompt,
            completion,
            cached,
            reasoning,
            (prompt - cached) * INPUT_NANOS + cached * CACHED_NANOS,
            completion * OUTPUT_NANOS,
            "ok",
        )
        for stream, prompt, completion, cached, reasoning in native.expected
    ]
    assert sorted(tuple(r) for r in rows) == sorted(expected)


def _requests_counted(native: Native) -> int:
    today = dt.datetime.now(dt.UTC).date().isoformat()
    reply = httpx.get(
        f"{native.stack.edge_url}/v1/usage/summary",
        params={"start": today, "end": today},
        headers={"authorization": f"Bearer {KEYS['team-a']}"},
    )
    reply.raise_for_status()
    return int(reply.json()["total_requests"])
