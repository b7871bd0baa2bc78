"""The `anthropic` provider kind through the router's gRPC API (and the
provider's, for its usage records), against a loopback server speaking
Anthropic's Messages wire format, side by side with the `openai` kind."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import json_format

from switchboard.common.v1 import openai_pb2
from switchboard.provider.v1 import provider_pb2, provider_pb2_grpc
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard.usage.v1 import usage_pb2
from switchboard_common.config import PricingConfig
from switchboard_usage.pricing import price
from tests.support.anthropic_upstream import AnthropicUpstream, Behaviour, Scripted
from tests.support.grpc_errors import reason, retry_delay_s
from tests.support.inprocess import services
from tests.support.openai_upstream import OpenAIUpstream

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

ANTHROPIC_KEY = "sk-ant-loopback-test-only-key-0001"
OPENAI_KEY = "sk-loopback-openai-key"
Upstreams = tuple[OpenAIUpstream, AnthropicUpstream]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def _config(openai_up: OpenAIUpstream, anthropic_up: AnthropicUpstream) -> dict[str, Any]:
    def model(name: str, provider: str) -> dict[str, Any]:
        return {"name": name, "deployments": [{"provider": provider, "model": "claude-up"}]}

    def claude(name: str, key_env: str) -> dict[str, Any]:
        return {
            "name": name,
            "kind": "anthropic",
            "base_url": anthropic_up.base_url,
            "api_key_env": key_env,
            "timeout_s": 1.0,
        }

    return {
        "providers": [
            {
                "name": "oa",
                "kind": "openai",
                "base_url": openai_up.base_url,
                "api_key_env": "LOOPBACK_OPENAI_KEY",
                "timeout_s": 1.0,
            },
            claude("an", "LOOPBACK_ANTHROPIC_KEY"),
            claude("an-no-key", "LOOPBACK_ANTHROPIC_UNSET_KEY"),
        ],
        "models": [
            model("via-openai", "oa"),
            model("via-anthropic", "an"),
            model("anthropic-no-key", "an-no-key"),
        ],
    }


@pytest_asyncio.fixture
async def upstreams() -> AsyncIterator[Upstreams]:
    async with (
        OpenAIUpstream(api_key=OPENAI_KEY) as openai_up,
        AnthropicUpstream(api_key=ANTHROPIC_KEY) as anthropic_up,
    ):
        yield openai_up, anthropic_up


@pytest_asyncio.fixture
async def settings(
    upstreams: Upstreams, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Any]:
    monkeypatch.setenv("LOOPBACK_OPENAI_KEY", OPENAI_KEY)
    monkeypatch.setenv("LOOPBACK_ANTHROPIC_KEY", ANTHROPIC_KEY)
    monkeypatch.delenv("LOOPBACK_ANTHROPIC_UNSET_KEY", raising=False)
    monkeypatch.setenv("SWITCHBOARD_BREAKER_CONSECUTIVE_FAILURES", "1000")
    async with services(_config(*upstreams), tmp_path, monkeypatch) as running:
        yield running


@pytest_asyncio.fixture
async def router(settings: Any) -> AsyncIterator[router_pb2_grpc.RouterServiceAsyncStub]:
    async with grpc.aio.insecure_channel(settings.address("router")) as channel:
        yield router_pb2_grpc.RouterServiceStub(channel)


@pytest_asyncio.fixture
async def provider(settings: Any) -> AsyncIterator[provider_pb2_grpc.ProviderServiceAsyncStub]:
    async with grpc.aio.insecure_channel(settings.address("provider")) as channel:
        yield provider_pb2_grpc.ProviderServiceStub(channel)


def _chat(model: str, messages: list[dict[str, Any]] | None = None, **extra: Any) -> Any:
    body = {"model": model, "messages": messages or [{"role": "user", "content": "hello world"}]}
    return json_format.ParseDict(body | extra, openai_pb2.ChatCompletionParams())


def _view(message: Any) -> Any:
    view = json_format.MessageToDict(message, preserving_proto_field_name=True)
    for name in ("id", "created", "model", "system_fingerprint"):
        view.pop(name, None)
    return view


async def _stream(router: router_pb2_grpc.RouterServiceAsyncStub, params: Any) -> list[Any]:
    call = router.StreamChatCompletion(router_pb2.StreamChatCompletionRequest(params=params))
    return [r.chunk async for r in call]


async def _attempt(
    provider: provider_pb2_grpc.ProviderServiceAsyncStub,
    stream: bool,
    seen: threading.Event | None = None,
    **extra: Any,
) -> list[provider_pb2.StreamGenerateResponse]:
    """One attempt straight at the provider; its events, whatever the outcome.
    `seen` is set once some content has come (see Behaviour.reset_when)."""
    request = provider_pb2.StreamGenerateRequest(
        request_id="r1",
        stream=stream,
        target=provider_pb2.Target(provider="an", upstream_model="claude-up", deployment_id="d"),
        chat=_chat("via-anthropic", **extra),
    )
    events = []
    call = provider.StreamGenerate(request)
    try:
        async for event in call:
            events.append(event)
            if seen is not None and any(c.delta.content for c in event.chat_chunk.choices):
                seen.set()
    except grpc.aio.AioRpcError:
        pass
    return events


async def test_plain_and_streamed_answers_match_the_openai_kind(
    router: router_pb2_grpc.RouterServiceAsyncStub, upstreams: Upstreams
) -> None:
    messages = [
        {"role": "system", "content": "answer in two words"},
        {"role": "user", "content": "first question here"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": [{"type": "text", "text": "second one"}]},
    ]
    for extra in ({}, {"max_tokens": 2}, {"messages": messages}):
        unary = [
            await router.CreateChatCompletion(
                router_pb2.CreateChatCompletionRequest(params=_chat(m, **extra))
            )
            for m in ("via-openai", "via-anthropic")
        ]
        assert _view(unary[1]) == _view(unary[0]), extra
        assert unary[1].id.startswith("msg_")
        served = upstreams[1].served[-1]
        assert unary[1].usage.prompt_tokens == served.prompt_tokens
        assert unary[1].usage.completion_tokens == served.output_tokens
        streams = [
            await _stream(router, _chat(m, stream_options={"include_usage": True}, **extra))
            for m in ("via-openai", "via-anthropic")
        ]
        # Same sequence: role chunk, one chunk per word, finish, usage.
        assert [_view(c) for c in streams[1]] == [_view(c) for c in streams[0]], extra
        assert len({c.id for c in streams[1]}) == 1


async def test_the_request_anthropic_receives(
    router: router_pb2_grpc.RouterServiceAsyncStub, upstreams: Upstreams
) -> None:
    # The body's mapping is tests/unit/test_anthropic_mapping.py's; here, the exchange.
    params = _chat("via-anthropic", temperature=0.5)
    await router.CreateChatCompletion(router_pb2.CreateChatCompletionRequest(params=params))
    request = upstreams[1].requests[-1]
    assert request.path == "/v1/messages"
    assert request.headers["authorization"] == f"Bearer {ANTHROPIC_KEY}"
    assert request.headers["anthropic-version"]
    # Messages requires max_tokens; the SDK no longer names temperature but sends it.
    assert (request.body["max_tokens"], request.body["temperature"]) == (4096, 0.5)


async def test_tool_calls_round_trip(
    router: router_pb2_grpc.RouterServiceAsyncStub, upstreams: Upstreams
) -> None:
    anthropic_up = upstreams[1]
    anthropic_up.script(
        Scripted(text="let me look", tool_calls=[("get_weather", {"city": "Paris"})])
    )
    question = [{"role": "user", "content": "weather in Paris?"}]
    params = _chat(
        "via-anthropic",
        question,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
    )
    answer = await router.CreateChatCompletion(
        router_pb2.CreateChatCompletionRequest(params=params)
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "let me look"
    [call] = choice.message.tool_calls
    assert (call.type, call.function.name) == ("function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    sent = anthropic_up.requests[-1].body
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city",
            "input_schema": WEATHER["function"]["parameters"],  # type: ignore[index]
        }
    ]
    assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}

    # The caller runs the tool and sends its result back: two tool messages merge
    # into one user turn of tool_result blocks, after the assistant's tool_use.
    follow_up = [
        *question,
        json_format.MessageToDict(choice.message, preserving_proto_field_name=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny 21C"},
        {
            "role": "tool",
            "tool_call_id": "toolu_other",
            "content": [{"type": "text", "text": "ok"}],
        },
    ]
    anthropic_up.script(Scripted(text="It is sunny."))
    params = _chat("via-anthropic", follow_up, tools=[WEATHER], tool_choice="auto")
    answer = await router.CreateChatCompletion(
        router_pb2.CreateChatCompletionRequest(params=params)
    )
    assert (answer.choices[0].message.content, answer.choices[0].finish_reason) == (
        "It is sunny.",
        "stop",
    )
    sent = anthropic_up.requests[-1].body
    assert sent["tool_choice"] == {"type": "auto"}
    assert sent["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "let me look"},
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "sunny 21C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_other",
                    "content": [{"type": "text", "text": "ok"}],
                },
            ],
        },
    ]


async def test_streamed_tool_call_deltas(
    router: router_pb2_grpc.RouterServiceAsyncStub, upstreams: Upstreams
) -> None:
    upstreams[1].script(
        Scripted(tool_calls=[("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Oslo"})])
    )
    params = _chat("via-anthropic", tools=[WEATHER], stream_options={"include_usage": True})
    chunks = await _stream(router, params)
    assert chunks[0].choices[0].delta.role == "assistant"
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id
                call["name"] += delta.function.name
                call["arguments"] += delta.function.arguments
    assert sorted(calls) == [0, 1]
    assert [c["name"] for c in calls.values()] == ["get_weather", "get_weather"]
    assert [json.loads(c["arguments"]) for c in calls.values()] == [
        {"city": "Paris"},
        {"city": "Oslo"},
    ]
    assert all(c["id"].startswith("toolu_") for c in calls.values())
    # Arguments arrive in pieces, as Anthropic streamed them.
    assert sum(len(c.choices) for c in chunks) > 4
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens == upstreams[1].served[-1].output_tokens


async def test_cache_reads_and_writes_are_accounted_and_priced_apart(
    provider: provider_pb2_grpc.ProviderServiceAsyncStub, upstreams: Upstreams
) -> None:
    system = {
        "role": "system",
        "content": [
            {
                "type": "text",
                "text": "a long shared preamble",
                "cache_control": {"type": "ephemeral"},
            }
        ],
    }
    messages = [system, {"role": "user", "content": "hello world"}]
    records = []
    for stream in (False, True):
        events = await _attempt(provider, stream, messages=messages)
        assert [e.WhichOneof("event") for e in events].count("usage") == 1
        records.append(events[-1].usage)
    written, read = records
    served = upstreams[1].served
    assert (written.cache_write_tokens, written.cached_tokens) == (4, 0)
    assert (read.cache_write_tokens, read.cached_tokens) == (0, 4)
    for record, call in zip(records, served, strict=True):
        assert record.prompt_tokens == call.prompt_tokens == 6
        assert record.completion_tokens == call.output_tokens
        assert not record.estimated
        assert record.provider_request_id.startswith("req_")
    pricing = PricingConfig(
        input_per_1k=1.0, cached_input_per_1k=0.1, cache_write_input_per_1k=1.25, output_per_1k=2.0
    )
    # 2 fresh tokens at 1.0 and 4 written at 1.25 per 1K; then 2 fresh and 4 read at 0.1.
    assert price(written, pricing).input_cost_nanos == 7_000_000
    assert price(read, pricing).input_cost_nanos == 2_400_000


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_exactly_one_usage_record_per_attempt(
    provider: provider_pb2_grpc.ProviderServiceAsyncStub, upstreams: Upstreams, stream: bool
) -> None:
    cases = [
        (Behaviour(), usage_pb2.USAGE_STATUS_OK),
        (Behaviour(mode="status", status=529), usage_pb2.USAGE_STATUS_ERROR),
        (Behaviour(mode="error_event", status=529), usage_pb2.USAGE_STATUS_ERROR),
    ]
    seen = threading.Event()
    if stream:
        reset = Behaviour(mode="reset_after", reset_after_events=4, reset_when=seen)
        cases.append((reset, usage_pb2.USAGE_STATUS_PARTIAL))
    for behaviour, status in cases:
        upstreams[1].behaviour = behaviour
        events = await _attempt(
            provider, stream, seen, messages=[{"role": "user", "content": "one two three"}]
        )
        kinds = [e.WhichOneof("event") for e in events]
        assert kinds.count("usage") == 1, behaviour
        assert kinds[-1] == "usage", behaviour
        assert events[-1].usage.status == status, behaviour


FAILURES = [
    (529, None, grpc.StatusCode.UNAVAILABLE, "SERVICE_UNAVAILABLE"),
    (500, None, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_ERROR"),
    (400, None, grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_INVALID_REQUEST"),
    (404, None, grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_INVALID_REQUEST"),
    (401, None, grpc.StatusCode.FAILED_PRECONDITION, "UPSTREAM_AUTH"),
    (403, None, grpc.StatusCode.FAILED_PRECONDITION, "UPSTREAM_AUTH"),
    # The error type decides, whatever the status.
    (500, "overloaded_error", grpc.StatusCode.UNAVAILABLE, "SERVICE_UNAVAILABLE"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_errors_are_mapped(
    router: router_pb2_grpc.RouterServiceAsyncStub, upstreams: Upstreams, stream: bool
) -> None:
    anthropic_up = upstreams[1]
    modes = ["status", "error_event"] if stream else ["status"]
    for mode in modes:
        for status, error_type, code, why in FAILURES:
            anthropic_up.reset()
            anthropic_up.behaviour = Behaviour(mode=mode, status=status, error_type=error_type)  # type: ignore[arg-type]
            received: list[Any] = []
            with pytest.raises(grpc.aio.AioRpcError) as err:
                if stream:
                    call = router.StreamChatCompletion(
                        router_pb2.StreamChatCompletionRequest(params=_chat("via-anthropic"))
                    )
                    async for r in call:
                        received.append(r)
                else:
                    await router.CreateChatCompletion(
                        router_pb2.CreateChatCompletionRequest(params=_chat("via-anthropic"))
                    )
            assert (err.value.code(), reason(err.value)) == (code, why), (mode, status)
            # Every failure came before any output: nothing reached the client.
            assert not received
            retried = why in ("SERVICE_UNAVAILABLE", "UPSTREAM_ERROR")
            assert (len(anthropic_up.requests) > 1) == retried, (mode, status)
            assert ANTHROPIC_KEY not in str(err.value.details())


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_a_silent_upstream_times_out(
    router: router_pb2_grpc.RouterServiceAsyncStub, upstreams: Upstreams, stream: bool
) -> None:
    upstreams[1].behaviour = Behaviour(mode="hang")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if stream:
            await _stream(router, _chat("via-anthropic"))
        else:
            await router.CreateChatCompletion(
                router_pb2.CreateChatCompletionRequest(params=_chat("via-anthropic"))
            )
    assert (err.value.code(), reason(err.value)) == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "UPSTREAM_TIMEOUT",
    )
    assert await upstreams[1].wait_for(lambda: upstreams[1].in_flight == 0, within_s=2.0)


async def test_client_cancel_closes_the_upstream_request(
    router: router_pb2_grpc.RouterServiceAsyncStub, upstreams: Upstreams
) -> None:
    anthropic_up = upstreams[1]
    anthropic_up.behaviour = Behaviour(event_delay_s=0.2)
    params = _chat("via-anthropic", [{"role": "user", "content": "one two three four"}])
    call = router.StreamChatCompletion(router_pb2.StreamChatCompletionRequest(params=params))
    first = await call.read()
    assert isinstance(first, router_pb2.StreamChatCompletionResponse)
    call.cancel()
    assert await anthropic_up.wait_for(lambda: anthropic_up.disconnects == 1, within_s=2.0)
    assert await anthropic_up.wait_for(lambda: anthropic_up.in_flight == 0, within_s=2.0)
    assert not anthropic_up.served[-1].completed


async def test_rate_limit_carries_retry_after(
    router: router_pb2_grpc.RouterServiceAsyncStub, upstreams: Upstreams
) -> None:
    upstreams[1].behaviour = Behaviour(mode="status", status=429, retry_after=1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router.CreateChatCompletion(
            router_pb2.CreateChatCompletionRequest(params=_chat("via-anthropic"))
        )
    assert (err.value.code(), reason(err.value)) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "UPSTREAM_RATE_LIMITED",
    )
    assert retry_delay_s(err.value) == 1


async def test_what_messages_cannot_express_is_refused(
    router: router_pb2_grpc.RouterServiceAsyncStub, upstreams: Upstreams
) -> None:
    refused: list[tuple[dict[str, Any], str]] = [
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
    ]
    for extra, param in refused:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await router.CreateChatCompletion(
                router_pb2.CreateChatCompletionRequest(params=_chat("via-anthropic", **extra))
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, extra
        assert param in (err.value.details() or ""), extra
    assert not upstreams[1].requests


async def test_missing_key_names_the_variable(
    router: router_pb2_grpc.RouterServiceAsyncStub, upstreams: Upstreams
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router.CreateChatCompletion(
            router_pb2.CreateChatCompletionRequest(params=_chat("anthropic-no-key"))
        )
    assert reason(err.value) == "UPSTREAM_AUTH"
    assert "LOOPBACK_ANTHROPIC_UNSET_KEY" in (err.value.details() or "")
    assert not upstreams[1].requests
