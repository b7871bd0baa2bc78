"""Real agent clients, unchanged, through the edge: the official anthropic SDK
on /v1/messages (create, stream, count_tokens) with tools on an OpenAI-compatible
and a Gemini upstream; the openai SDK on /v1/responses (create with tools and
previous_response_id, stream, stored responses per key); and the OpenAI Agents
SDK running a two-tool agent to completion."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from switchboard_stack.harness import Stack, running_stack
from tests.e2e.agent_stack import (
    ANTHROPIC_KEY,
    FALLING_BACK,
    KEYS,
    MODELS,
    WEATHER_SCHEMA,
    config_and_env,
)
from tests.support import anthropic_upstream, gemini_upstream, openai_upstream
from tests.support.anthropic_upstream import AnthropicUpstream
from tests.support.gemini_upstream import GeminiUpstream
from tests.support.gemini_upstream import Scripted as GeminiScripted
from tests.support.openai_upstream import Behaviour, OpenAIUpstream, run_in_thread

pytestmark = pytest.mark.e2e

TOOL: Any = {"name": "get_weather", "description": "The weather", "input_schema": WEATHER_SCHEMA}
QUESTION: Any = [{"role": "user", "content": "weather in Paris?"}]


@pytest.fixture(scope="module")
def anthropic_up() -> Iterator[AnthropicUpstream]:
    with run_in_thread(AnthropicUpstream(api_key=ANTHROPIC_KEY)) as server:
        yield server


@pytest.fixture(scope="module")
def stack(
    upstream: OpenAIUpstream,
    gemini_upstream: GeminiUpstream,
    anthropic_up: AnthropicUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    config, env = config_and_env(upstream, gemini_upstream, anthropic_up)
    with running_stack(config, tmp_path_factory.mktemp("agents"), env) as running:
        yield running


@pytest.fixture
def claude(
    stack: Stack, upstream: OpenAIUpstream, gemini_upstream: GeminiUpstream
) -> Iterator[anthropic.Anthropic]:
    upstream.reset()
    gemini_upstream.reset()
    with anthropic.Anthropic(base_url=stack.edge_url, api_key=KEYS["team-a"], max_retries=0) as c:
        yield c


@pytest.fixture
def oai(stack: Stack, upstream: OpenAIUpstream) -> Iterator[openai.OpenAI]:
    upstream.reset()
    with openai.OpenAI(base_url=f"{stack.edge_url}/v1", api_key=KEYS["team-a"], max_retries=0) as c:
        yield c


def _script_tool_then_text(kind: str, up: OpenAIUpstream, gem: GeminiUpstream | None) -> None:
    if kind == "openai" or gem is None:
        up.script(
            openai_upstream.Scripted(tool_calls=[("get_weather", {"city": "Paris"})]),
            openai_upstream.Scripted(text="Sunny in Paris."),
        )
    else:
        gem.script(
            gemini_upstream.Scripted(calls=[("get_weather", {"city": "Paris"})]),
            gemini_upstream.Scripted(text="Sunny in Paris."),
        )


@pytest.mark.parametrize("kind", ["openai", "gemini"])
def test_anthropic_sdk_create_with_tools(
    claude: anthropic.Anthropic,
    upstream: OpenAIUpstream,
    gemini_upstream: GeminiUpstream,
    kind: str,
) -> None:
    _script_tool_then_text(kind, upstream, gemini_upstream)
    first = claude.messages.create(
        model=MODELS[kind], max_tokens=200, messages=QUESTION, tools=[TOOL], system="Be brief."
    )
    assert first.stop_reason == "tool_use"
    assert first.model == MODELS[kind]
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert (use.name, use.input) == ("get_weather", {"city": "Paris"})
    assert first.usage.output_tokens > 0
    assert first.usage.input_tokens > 0
    second = claude.messages.create(
        model=MODELS[kind],
        max_tokens=200,
        tools=[TOOL],
        messages=[
            *QUESTION,
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
            },
        ],
    )
    assert second.stop_reason == "end_turn"
    assert [b.type for b in second.content] == ["text"]
    assert second.content[0].text == "Sunny in Paris."  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["openai", "gemini"])
def test_anthropic_sdk_stream_with_tools(
    claude: anthropic.Anthropic,
    upstream: OpenAIUpstream,
    gemini_upstream: GeminiUpstream,
    kind: str,
) -> None:
    _script_tool_then_text(kind, upstream, gemini_upstream)
    with claude.messages.stream(
        model=MODELS[kind], max_tokens=200, messages=QUESTION, tools=[TOOL]
    ) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_message()
    assert events[0] == "message_start"
    assert "input_json" in events
    assert final.stop_reason == "tool_use"
    [use] = [b for b in final.content if b.type == "tool_use"]
    assert use.input == {"city": "Paris"}
    assert final.usage.output_tokens > 0
    with claude.messages.stream(
        model=MODELS[kind], max_tokens=200, messages=[{"role": "user", "content": "and now?"}]
    ) as stream:
        text = "".join(stream.text_stream)
    assert text == "Sunny in Paris."


def test_prompt_caching_passes_through_to_an_anthropic_upstream(
    claude: anthropic.Anthropic, anthropic_up: AnthropicUpstream
) -> None:
    anthropic_up.reset()
    system: Any = [
        {
            "type": "text",
            "text": "a long shared preamble " * 20,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    first = claude.messages.create(
        model=MODELS["anthropic"], max_tokens=50, system=system, messages=QUESTION
    )
    second = claude.messages.create(
        model=MODELS["anthropic"], max_tokens=50, system=system, messages=QUESTION
    )
    written, read = anthropic_up.served[0], anthropic_up.served[1]
    assert written.cache_creation_input_tokens > 0
    assert first.usage.cache_creation_input_tokens == written.cache_creation_input_tokens
    assert first.usage.input_tokens == written.input_tokens
    assert read.cache_read_input_tokens == written.cache_creation_input_tokens
    assert second.usage.cache_read_input_tokens == read.cache_read_input_tokens
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.input_tokens == read.input_tokens


def test_fallback_mid_conversation_with_tools(
    claude: anthropic.Anthropic, anthropic_up: AnthropicUpstream, gemini_upstream: GeminiUpstream
) -> None:
    """Claude calls the tool; then Anthropic is overloaded and Gemini, the
    fallback, answers the tool's result."""
    anthropic_up.reset()
    anthropic_up.script(anthropic_upstream.Scripted(tool_calls=[("get_weather", {"city": "Rome"})]))
    gemini_upstream.script(GeminiScripted(text="Warm in Rome."))
    first = claude.messages.create(
        model=FALLING_BACK, max_tokens=100, messages=QUESTION, tools=[TOOL]
    )
    [use] = [b for b in first.content if b.type == "tool_use"]
    anthropic_up.behaviour = anthropic_upstream.Behaviour(
        mode="status", status=529, error_type="overloaded_error"
    )
    try:
        second = claude.messages.create(
            model=FALLING_BACK,
            max_tokens=100,
            tools=[TOOL],
            messages=[
                *QUESTION,
                {"role": "assistant", "content": first.content},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "warm"}],
                },
            ],
        )
    finally:
        anthropic_up.reset()
    assert second.content[0].type == "text"
    assert second.content[0].text == "Warm in Rome."
    # Gemini got the call and its result as function call and response parts.
    contents: Any = gemini_upstream.requests[-1].body["contents"]
    parts = [p for c in contents for p in c["parts"]]
    assert any(p.get("functionCall", {}).get("name") == "get_weather" for p in parts)
    assert any("functionResponse" in p for p in parts)


def test_anthropic_sdk_count_tokens(claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(
        model=MODELS["openai"], system="four chars each", messages=QUESTION
    )
    # The provider meter's estimate: (characters + 3) // 4 over the prompt's text.
    assert counted.input_tokens == (len("four chars each\nweather in Paris?") + 3) // 4


def test_anthropic_errors_in_anthropics_shape(stack: Stack) -> None:
    with (
        anthropic.Anthropic(
            base_url=stack.edge_url, api_key="sk-wrong-0123456789", max_retries=0
        ) as c,
        pytest.raises(anthropic.AuthenticationError) as refused,
    ):
        c.messages.create(model=MODELS["openai"], max_tokens=10, messages=QUESTION)
    body: Any = refused.value.body
    assert body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": body["error"]["message"]},
    }
    with anthropic.Anthropic(base_url=stack.edge_url, api_key=KEYS["team-a"], max_retries=0) as c:
        with pytest.raises(anthropic.BadRequestError) as bad:
            c.messages.create(model=MODELS["openai"], max_tokens=0, messages=QUESTION)
        with pytest.raises(anthropic.NotFoundError):
            c.messages.create(model="no-such-model", max_tokens=10, messages=QUESTION)
    refusal: Any = bad.value.body
    assert refusal["error"]["type"] == "invalid_request_error"


FUNCTION_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather",
    "parameters": WEATHER_SCHEMA,
}


def test_responses_create_with_tools_and_previous_response(
    oai: openai.OpenAI, upstream: OpenAIUpstream
) -> None:
    _script_tool_then_text("openai", upstream, None)
    first = oai.responses.create(
        model=MODELS["openai"],
        input="weather in Paris?",
        tools=[FUNCTION_TOOL],
        instructions="Be brief.",
    )
    assert first.status == "completed"
    [call] = [item for item in first.output if item.type == "function_call"]
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    second = oai.responses.create(
        model=MODELS["openai"],
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[FUNCTION_TOOL],
    )
    assert second.output_text == "Sunny in Paris."
    assert second.previous_response_id == first.id
    # The upstream saw the whole conversation: the question, the call, its output.
    last: Any = upstream.requests[-1].json
    sent = last["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == call.call_id
    assert second.usage is not None
    assert second.usage.output_tokens == upstream.served[-1].completion_tokens

    stored = oai.responses.retrieve(second.id)
    assert stored.output_text == "Sunny in Paris."
    items = oai.responses.input_items.list(second.id)
    assert [i.type for i in items.data] == ["function_call_output"]


def test_responses_stream(oai: openai.OpenAI, upstream: OpenAIUpstream) -> None:
    upstream.script(
        openai_upstream.Scripted(
            text="Let me look.", tool_calls=[("get_weather", {"city": "Oslo"})]
        )
    )
    with oai.responses.stream(
        model=MODELS["openai"], input="weather in Oslo?", tools=[FUNCTION_TOOL]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in kinds
    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-1] == "response.completed"
    assert final.output_text == "Let me look."
    [call] = [item for item in final.output if item.type == "function_call"]
    assert json.loads(call.arguments) == {"city": "Oslo"}


def test_a_key_cannot_read_another_keys_response(stack: Stack, oai: openai.OpenAI) -> None:
    mine = oai.responses.create(model=MODELS["openai"], input="hello")
    with openai.OpenAI(
        base_url=f"{stack.edge_url}/v1", api_key=KEYS["team-b"], max_retries=0
    ) as other:
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            other.responses.delete(mine.id)
        with pytest.raises(openai.NotFoundError):
            other.responses.input_items.list(mine.id)
        with pytest.raises(openai.NotFoundError):
            other.responses.create(
                model=MODELS["openai"], input="more", previous_response_id=mine.id
            )
    assert oai.responses.retrieve(mine.id).id == mine.id
    oai.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(mine.id)
    unstored = oai.responses.create(model=MODELS["openai"], input="hello", store=False)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(unstored.id)


def test_agents_sdk_runs_a_two_tool_agent(stack: Stack, upstream: OpenAIUpstream) -> None:
    agents: Any = pytest.importorskip("agents")
    upstream.reset()
    upstream.script(
        openai_upstream.Scripted(tool_calls=[("get_weather", {"city": "Paris"})]),
        openai_upstream.Scripted(tool_calls=[("convert", {"celsius": 21})]),
        openai_upstream.Scripted(text="It is 69.8 F in Paris."),
    )
    seen: list[str] = []

    def get_weather(city: str) -> str:
        """The temperature in a city, in Celsius."""
        seen.append(f"weather:{city}")
        return "21"

    def convert(celsius: float) -> str:
        """Celsius to Fahrenheit."""
        seen.append(f"convert:{celsius}")
        return str(celsius * 9 / 5 + 32)

    agents.set_tracing_disabled(True)

    async def run() -> Any:
        async with openai.AsyncOpenAI(
            base_url=f"{stack.edge_url}/v1", api_key=KEYS["team-a"], max_retries=0
        ) as client:
            agent = agents.Agent(
                name="weather",
                instructions="Answer in Fahrenheit.",
                tools=[agents.function_tool(get_weather), agents.function_tool(convert)],
                model=agents.OpenAIResponsesModel(model=MODELS["openai"], openai_client=client),
            )
            return await agents.Runner.run(agent, "How warm is Paris?")

    result = asyncio.run(run())
    assert result.final_output == "It is 69.8 F in Paris."
    assert seen == ["weather:Paris", "convert:21.0"]
    # Each turn continued the last: the upstream saw both tool results.
    last: Any = upstream.requests[-1].json
    roles = [m["role"] for m in last["messages"]]
    assert roles.count("tool") == 2


def test_edge_refusals_in_anthropic_shape(stack: Stack) -> None:
    reply = httpx.post(
        f"{stack.edge_url}/v1/messages", content=b"{", headers={"x-api-key": KEYS["team-a"]}
    )
    assert reply.status_code == 400
    assert reply.json()["type"] == "error"


@pytest.mark.parametrize(
    ("path", "body", "last_event"),
    [
        ("/v1/messages", {"max_tokens": 100, "messages": QUESTION}, "error"),
        ("/v1/responses", {"input": "weather in Paris?"}, "response.failed"),
    ],
)
def test_a_stream_broken_midway_ends_with_an_error_event(
    stack: Stack, upstream: OpenAIUpstream, path: str, body: dict[str, Any], last_event: str
) -> None:
    upstream.reset()
    seen = threading.Event()
    upstream.behaviour = Behaviour(
        mode="reset_after",
        reset_after_chunks=2,
        reply="one two three four five six",
        reset_when=seen,
    )
    try:
        with httpx.stream(
            "POST",
            f"{stack.edge_url}{path}",
            json={"model": MODELS["openai"], "stream": True, **body},
            headers={"authorization": f"Bearer {KEYS['team-a']}"},
            timeout=30,
        ) as reply:
            assert reply.status_code == 200
            names = []
            for line in reply.iter_lines():
                if line.startswith("event: "):
                    names.append(line[7:])
                    if "delta" in line:
                        seen.set()
    finally:
        upstream.reset()
    # Text had started (the status line was out): the failure is the last event.
    assert any("delta" in name for name in names)
    assert names[-1] == last_event
