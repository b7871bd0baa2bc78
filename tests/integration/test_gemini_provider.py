"""The `gemini` provider kind through the router's gRPC API, side by side with
the `openai` kind: two loopback upstreams that give the same deterministic
answers and counts, so every difference would be the adapters'."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import json_format

from switchboard.common.v1 import openai_pb2
from switchboard.provider.v1 import provider_pb2
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard.usage.v1 import usage_pb2
from switchboard_common.config import ProviderConfig
from switchboard_provider.adapters.gemini import GeminiAdapter
from switchboard_provider.meter import UsageMeter
from tests.conftest import GEMINI_UPSTREAM_KEY, UPSTREAM_KEY, Loopbacks, loopback_provider
from tests.support.gemini_upstream import Behaviour, GeminiUpstream
from tests.support.grpc_errors import reason, retry_delay_s
from tests.support.inprocess import services
from tests.support.openai_upstream import OpenAIUpstream

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

OPENAI_KEY = UPSTREAM_KEY
GEMINI_KEY = GEMINI_UPSTREAM_KEY
WRONG_KEY = "AIzaWrongTestOnlyKey00000001"
Upstreams = tuple[OpenAIUpstream, GeminiUpstream]


def _config(openai_up: OpenAIUpstream, gemini_up: GeminiUpstream) -> dict[str, Any]:
    def gemini(name: str, key_env: str) -> dict[str, Any]:
        return loopback_provider(name, gemini_up, key_env, timeout_s=1.0)

    def model(name: str, provider: str, kind: str = "chat") -> dict[str, Any]:
        return {"name": name, "kind": kind, "deployments": [{"provider": provider, "model": "up"}]}

    return {
        "providers": [
            loopback_provider("oa", openai_up, "LOOPBACK_OPENAI_KEY", timeout_s=1.0),
            gemini("gm", "LOOPBACK_GEMINI_KEY"),
            gemini("gm-wrong-key", "LOOPBACK_GEMINI_WRONG_KEY"),
            gemini("gm-no-key", "LOOPBACK_GEMINI_UNSET_KEY"),
        ],
        "models": [
            model("via-openai", "oa"),
            model("via-gemini", "gm"),
            model("gemini-wrong-key", "gm-wrong-key"),
            model("gemini-no-key", "gm-no-key"),
            model("embed-openai", "oa", "embedding"),
            model("embed-gemini", "gm", "embedding"),
        ],
    }


@pytest_asyncio.fixture
async def upstreams(loopbacks: Loopbacks) -> Upstreams:
    return await loopbacks.openai(), await loopbacks.gemini()


@pytest_asyncio.fixture
async def router(
    upstreams: Upstreams, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[router_pb2_grpc.RouterServiceAsyncStub]:
    monkeypatch.setenv("LOOPBACK_OPENAI_KEY", OPENAI_KEY)
    # Failure-mapping tests fail one deployment on purpose, many times in a row.
    monkeypatch.setenv("SWITCHBOARD_BREAKER_CONSECUTIVE_FAILURES", "1000")
    monkeypatch.setenv("LOOPBACK_GEMINI_KEY", GEMINI_KEY)
    monkeypatch.setenv("LOOPBACK_GEMINI_WRONG_KEY", WRONG_KEY)
    monkeypatch.delenv("LOOPBACK_GEMINI_UNSET_KEY", raising=False)
    async with (
        services(_config(*upstreams), tmp_path, monkeypatch) as settings,
        grpc.aio.insecure_channel(settings.address("router")) as channel,
    ):
        yield router_pb2_grpc.RouterServiceStub(channel)


def _chat(model: str, messages: list[dict[str, Any]] | None = None, **extra: Any) -> Any:
    body = {"model": model, "messages": messages or [{"role": "user", "content": "hello world"}]}
    return json_format.ParseDict(body | extra, openai_pb2.ChatCompletionParams())


def _choices(answer: openai_pb2.ChatCompletion) -> list[tuple[int, str, str, str]]:
    return [(c.index, c.message.role, c.message.content, c.finish_reason) for c in answer.choices]


def _chunk_view(chunk: openai_pb2.ChatCompletionChunk | openai_pb2.Completion) -> Any:
    """What a client sees of a chunk, less the per-call id and timestamp."""
    view = json_format.MessageToDict(chunk, preserving_proto_field_name=True)
    for name in ("id", "created", "model", "system_fingerprint"):
        view.pop(name, None)
    return view


VARIANTS: list[dict[str, Any]] = [
    {},
    {"max_tokens": 2},
    {"n": 2},
    {
        "messages": [
            {"role": "system", "content": "answer in two words"},
            {"role": "user", "content": "first question here"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": [{"type": "text", "text": "second one"}]},
        ]
    },
]


async def test_unary_chat_matches_the_openai_kind(
    router: router_pb2_grpc.RouterServiceAsyncStub, upstreams: Upstreams
) -> None:
    for extra in VARIANTS:
        answers = [
            await router.CreateChatCompletion(
                router_pb2.CreateChatCompletionRequest(params=_chat(model, **extra))
            )
            for model in ("via-openai", "via-gemini")
        ]
        via_openai, via_gemini = answers
        assert via_gemini.choices, extra
        assert _choices(via_gemini) == _choices(via_openai), extra
        assert via_gemini.usage == via_openai.usage, extra
        assert (via_gemini.object, via_gemini.model) == ("chat.completion", "via-gemini")
        assert via_gemini.id.startswith("gemini-")
        served = upstreams[1].served[-1]
        assert via_gemini.usage.prompt_tokens == served.prompt_tokens
        assert via_gemini.usage.completion_tokens == served.completion_tokens


async def test_stream_matches_the_openai_kind(
    router: router_pb2_grpc.RouterServiceAsyncStub,
) -> None:
    # n > 1 is left out: OpenAI streams each choice in its own chunk, Gemini
    # sends every candidate in one response, and chunks are never split.
    for extra in (v for v in VARIANTS if "n" not in v):
        streams = []
        for model in ("via-openai", "via-gemini"):
            params = _chat(model, stream_options={"include_usage": True}, **extra)
            call = router.StreamChatCompletion(
                router_pb2.StreamChatCompletionRequest(params=params)
            )
            streams.append([r.chunk async for r in call])
        via_openai, via_gemini = streams
        # Same sequence: role chunk, one chunk per upstream chunk, finish, usage.
        assert [_chunk_view(c) for c in via_gemini] == [_chunk_view(c) for c in via_openai]
        assert len({c.id for c in via_gemini}) == 1
        assert via_gemini[-1].usage.total_tokens > 0
        assert not via_gemini[-1].choices


async def test_sse_events_match_the_openai_kind(
    router: router_pb2_grpc.RouterServiceAsyncStub,
) -> None:
    streams = []
    for model in ("via-openai", "via-gemini"):
        for include_usage in (False, True):
            params = _chat(model, stream_options={"include_usage": include_usage})
            call = router.StreamChatCompletionSse(
                router_pb2.StreamChatCompletionSseRequest(params=params)
            )
            events = [b.data async for b in call]
            assert events[-1] == b"data: [DONE]\n\n"
            payloads = [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
            for p in payloads:
                del p["id"], p["created"], p["model"], p["system_fingerprint"]
            streams.append(payloads)
    assert streams[2:] == streams[:2]


async def test_completions_match_the_openai_kind(
    router: router_pb2_grpc.RouterServiceAsyncStub,
) -> None:
    def params(model: str) -> openai_pb2.CompletionParams:
        body = {"model": model, "prompt": "say this", "stream_options": {"include_usage": True}}
        return json_format.ParseDict(body, openai_pb2.CompletionParams())

    unary = [
        await router.CreateCompletion(router_pb2.CreateCompletionRequest(params=params(m)))
        for m in ("via-openai", "via-gemini")
    ]
    assert unary[1].choices[0].text == "echo: say this"
    assert _chunk_view(unary[1]) == _chunk_view(unary[0])
    assert unary[1].object == "text_completion"
    streams = []
    for m in ("via-openai", "via-gemini"):
        call = router.StreamCompletion(router_pb2.StreamCompletionRequest(params=params(m)))
        streams.append([_chunk_view(r.chunk) async for r in call])
    assert streams[1] == streams[0]


async def test_the_request_gemini_receives(
    router: router_pb2_grpc.RouterServiceAsyncStub, upstreams: Upstreams
) -> None:
    pixel = base64.b64encode(b"\x89PNG fake pixels").decode()
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": "use plain words"},
        {"role": "user", "content": "earlier question"},
        {"role": "assistant", "content": "earlier answer"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp"}},
            ],
        },
    ]
    params = _chat(
        "via-gemini",
        messages,
        temperature=0.5,
        top_p=0.9,
        max_completion_tokens=50,
        stop=["END", "STOP"],
        seed=7,
        presence_penalty=0.25,
        frequency_penalty=0.5,
        response_format={"type": "json_object"},
    )
    answer = await router.CreateChatCompletion(
        router_pb2.CreateChatCompletionRequest(params=params)
    )
    assert answer.choices[0].message.content == "echo: what is this"
    request = upstreams[1].requests[-1]
    assert request.path == "/v1beta/models/up:generateContent"
    assert request.headers["x-goog-api-key"] == GEMINI_KEY
    body = request.json
    assert isinstance(body, dict)
    assert body["systemInstruction"]["parts"] == [{"text": "be brief"}, {"text": "use plain words"}]
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    parts = body["contents"][-1]["parts"]
    assert parts[0] == {"text": "what is this"}
    assert parts[1]["inlineData"] == {"data": pixel, "mime_type": "image/png"}
    assert parts[2]["fileData"] == {
        "file_uri": "https://example.com/cat.webp",
        "mime_type": "image/webp",
    }
    assert body["generationConfig"] == {
        "temperature": 0.5,
        "topP": 0.9,
        "maxOutputTokens": 50,
        "stopSequences": ["END", "STOP"],
        "seed": 7,
        "presencePenalty": 0.25,
        "frequencyPenalty": 0.5,
        "responseMimeType": "application/json",
    }


FAILURES = [
    (Behaviour(mode="status", status=500), grpc.StatusCode.UNAVAILABLE, "UPSTREAM_ERROR"),
    (Behaviour(mode="status", status=503), grpc.StatusCode.UNAVAILABLE, "UPSTREAM_ERROR"),
    (
        Behaviour(mode="status", status=400),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UPSTREAM_INVALID_REQUEST",
    ),
    (
        Behaviour(mode="status", status=404),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UPSTREAM_INVALID_REQUEST",
    ),
    (Behaviour(mode="status", status=401), grpc.StatusCode.FAILED_PRECONDITION, "UPSTREAM_AUTH"),
    (Behaviour(mode="status", status=403), grpc.StatusCode.FAILED_PRECONDITION, "UPSTREAM_AUTH"),
    (Behaviour(mode="hang"), grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT"),
    (Behaviour(mode="blocked"), grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_INVALID_REQUEST"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_upstream_failures_map_to_status(
    router: router_pb2_grpc.RouterServiceAsyncStub, upstreams: Upstreams, stream: bool
) -> None:
    for behaviour, code, why in FAILURES:
        upstreams[1].behaviour = behaviour
        received: list[Any] = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            if stream:
                call = router.StreamChatCompletion(
                    router_pb2.StreamChatCompletionRequest(params=_chat("via-gemini"))
                )
                async for r in call:
                    received.append(r)
            else:
                await router.CreateChatCompletion(
                    router_pb2.CreateChatCompletionRequest(params=_chat("via-gemini"))
                )
        assert (err.value.code(), reason(err.value)) == (code, why), behaviour
        # Every failure came before any output: nothing reached the client.
        assert not received
        if behaviour.mode == "blocked":
            assert "Gemini blocked the prompt: SAFETY" in (err.value.details() or "")


async def test_upstream_rate_limit_carries_retry_info(
    router: router_pb2_grpc.RouterServiceAsyncStub, upstreams: Upstreams
) -> None:
    upstreams[1].behaviour = Behaviour(mode="status", status=429, retry_after=7)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router.CreateChatCompletion(
            router_pb2.CreateChatCompletionRequest(params=_chat("via-gemini"))
        )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(err.value) == "UPSTREAM_RATE_LIMITED"
    assert retry_delay_s(err.value) == 7


async def test_rejected_key_is_upstream_auth_and_never_echoed(
    router: router_pb2_grpc.RouterServiceAsyncStub, upstreams: Upstreams
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router.CreateChatCompletion(
            router_pb2.CreateChatCompletionRequest(params=_chat("gemini-wrong-key"))
        )
    assert reason(err.value) == "UPSTREAM_AUTH"
    assert upstreams[1].requests[-1].headers["x-goog-api-key"] == WRONG_KEY
    assert WRONG_KEY not in str(err.value.details()) + str(err.value.trailing_metadata())


async def test_missing_key_names_the_variable(
    router: router_pb2_grpc.RouterServiceAsyncStub, upstreams: Upstreams
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router.CreateChatCompletion(
            router_pb2.CreateChatCompletionRequest(params=_chat("gemini-no-key"))
        )
    assert reason(err.value) == "UPSTREAM_AUTH"
    assert "LOOPBACK_GEMINI_UNSET_KEY" in (err.value.details() or "")
    assert not upstreams[1].requests


async def test_reset_mid_stream_ends_with_error_after_chunks(
    router: router_pb2_grpc.RouterServiceAsyncStub, upstreams: Upstreams
) -> None:
    seen = threading.Event()
    upstreams[1].behaviour = Behaviour(mode="reset_after", reset_after_chunks=2, reset_when=seen)
    received: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        params = _chat("via-gemini", [{"role": "user", "content": "one two three four"}])
        async for r in router.StreamChatCompletion(
            router_pb2.StreamChatCompletionRequest(params=params)
        ):
            received.extend(c.delta.content for c in r.chunk.choices)
            if "".join(received) == "echo: one ":
                seen.set()
    assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_ERROR")
    assert "".join(received) == "echo: one "
    # No retry once output reached the client: one upstream attempt only.
    assert len(upstreams[1].requests) == 1


async def test_timeout_bounds_silence_not_the_whole_stream(
    router: router_pb2_grpc.RouterServiceAsyncStub, upstreams: Upstreams
) -> None:
    gemini_up = upstreams[1]
    params = _chat("via-gemini", [{"role": "user", "content": "one two three four"}])
    # 5 chunks 0.3 s apart outlast timeout_s (1 s) but are never silent that long.
    gemini_up.behaviour = Behaviour(mode="slow", chunk_delay_s=0.3)
    call = router.StreamChatCompletion(router_pb2.StreamChatCompletionRequest(params=params))
    text = "".join([c.delta.content async for r in call for c in r.chunk.choices])
    assert text == "echo: one two three four"
    # A pause longer than timeout_s mid-stream is a timeout, after the chunks sent.
    gemini_up.behaviour = Behaviour(mode="slow", chunk_delay_s=1.5)
    received: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        call = router.StreamChatCompletion(router_pb2.StreamChatCompletionRequest(params=params))
        async for r in call:
            received.extend(c.delta.content for c in r.chunk.choices)
    assert (err.value.code(), reason(err.value)) == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "UPSTREAM_TIMEOUT",
    )
    assert "".join(received) == "echo: "
    assert await gemini_up.wait_for(lambda: gemini_up.in_flight == 0, within_s=2.0)


async def test_client_cancel_closes_the_upstream_request(
    router: router_pb2_grpc.RouterServiceAsyncStub, upstreams: Upstreams
) -> None:
    gemini_up = upstreams[1]
    gemini_up.behaviour = Behaviour(mode="slow", chunk_delay_s=0.2)
    call = router.StreamChatCompletion(
        router_pb2.StreamChatCompletionRequest(params=_chat("via-gemini"))
    )
    first = await call.read()
    assert isinstance(first, router_pb2.StreamChatCompletionResponse)
    call.cancel()
    assert await gemini_up.wait_for(lambda: gemini_up.disconnects == 1, within_s=2.0)
    assert await gemini_up.wait_for(lambda: gemini_up.in_flight == 0, within_s=2.0)
    assert not gemini_up.served[-1].completed


async def test_a_stream_closed_early_releases_the_upstream(
    upstreams: Upstreams, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider stops reading (its caller left) while the adapter waits at a
    yield, not inside the SDK: the connection must still close now, not when
    the garbage collector reaches the SDK's generators."""
    gemini_up = upstreams[1]
    gemini_up.behaviour = Behaviour(mode="slow", chunk_delay_s=0.3)
    monkeypatch.setenv("LOOPBACK_GEMINI_KEY", GEMINI_KEY)
    adapter = GeminiAdapter(
        ProviderConfig(
            name="gm", kind="gemini", base_url=gemini_up.base_url, api_key_env="LOOPBACK_GEMINI_KEY"
        )
    )
    request = provider_pb2.StreamGenerateRequest(
        target=provider_pb2.Target(provider="gm", upstream_model="up"),
        stream=True,
        chat=_chat("via-gemini", [{"role": "user", "content": "one two three four"}]),
    )
    events = adapter.generate(request, UsageMeter(request, usage_pb2.OPERATION_CHAT), 10.0)
    assert isinstance(events, AsyncGenerator)
    first, second = await anext(events), await anext(events)
    assert second.chat_chunk.choices[0].delta.content == "echo: "
    assert first.chat_chunk.choices[0].delta.role == "assistant"
    await events.aclose()
    try:
        assert await gemini_up.wait_for(lambda: gemini_up.disconnects == 1, within_s=1.0)
        assert await gemini_up.wait_for(lambda: gemini_up.in_flight == 0, within_s=1.0)
    finally:
        await adapter.close()


async def test_embeddings_match_the_openai_kind(
    router: router_pb2_grpc.RouterServiceAsyncStub, upstreams: Upstreams
) -> None:
    for encoding in ("float", "base64"):
        results = []
        for model in ("embed-openai", "embed-gemini"):
            params = openai_pb2.EmbeddingParams(model=model, encoding_format=encoding)
            params.input.list_value.extend(["one", "two words"])
            results.append(
                await router.CreateEmbedding(router_pb2.CreateEmbeddingRequest(params=params))
            )
        via_openai, via_gemini = results
        assert (via_gemini.object, via_gemini.model) == ("list", "embed-gemini")
        assert [d.index for d in via_gemini.data] == [0, 1]
        assert [d.embedding for d in via_gemini.data] == [d.embedding for d in via_openai.data]
        # Gemini reports no embedding usage: the provider estimates it.
        assert via_gemini.usage.prompt_tokens > 0
        assert upstreams[1].requests[-1].path == "/v1beta/models/up:batchEmbedContents"
