"""The router and provider services over real gRPC, against loopback upstreams
that speak OpenAI's wire format."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from switchboard.common.v1 import openai_pb2
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_common.settings import Settings
from tests.conftest import UPSTREAM_KEY, Loopbacks, loopback_provider
from tests.support.grpc_errors import reason, retry_delay_s
from tests.support.inprocess import services
from tests.support.openai_upstream import Behaviour, OpenAIUpstream

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


def _config(primary: OpenAIUpstream, backup: OpenAIUpstream, **keys: Any) -> dict[str, Any]:
    def provider(name: str, upstream: OpenAIUpstream) -> dict[str, Any]:
        return loopback_provider(name, upstream, "LOOPBACK_PROVIDER_KEY", timeout_s=1.0)

    config: dict[str, Any] = {
        "providers": [provider("primary", primary), provider("backup", backup)],
        "models": [
            {"name": "chat", "deployments": [{"provider": "primary", "model": "up-chat"}]},
            {
                "name": "chat-ha",
                "deployments": [
                    {"provider": "primary", "model": "up-chat", "weight": 1000000},
                    {"provider": "backup", "model": "up-chat", "weight": 1},
                ],
            },
            {
                "name": "embed",
                "kind": "embedding",
                "deployments": [{"provider": "primary", "model": "up-embed"}],
            },
        ],
    }
    config.update(keys)
    return config


@pytest_asyncio.fixture
async def upstreams(loopbacks: Loopbacks) -> tuple[OpenAIUpstream, OpenAIUpstream]:
    return await loopbacks.openai(), await loopbacks.openai()


@pytest_asyncio.fixture(params=["service", "router"])
async def router(
    request: pytest.FixtureRequest,
    upstreams: tuple[OpenAIUpstream, OpenAIUpstream],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[router_pb2_grpc.RouterServiceAsyncStub]:
    """The router, with the provider as a service of its own or (placement
    "router") inside the router's process, no provider service running: each
    test here holds for both."""
    monkeypatch.setenv("LOOPBACK_PROVIDER_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("SWITCHBOARD_PROVIDER_PLACEMENT", request.param)
    names = ("provider", "router") if request.param == "service" else ("router",)
    async with services(_config(*upstreams), tmp_path, monkeypatch, names=names) as settings:
        yield await _stub(settings)


async def _stub(settings: Settings) -> router_pb2_grpc.RouterServiceAsyncStub:
    channel = grpc.aio.insecure_channel(settings.address("router"))
    return router_pb2_grpc.RouterServiceStub(channel)


def _chat(model: str = "chat", text: str = "hello gateway world", **extra: Any) -> Any:
    params = openai_pb2.ChatCompletionParams(
        model=model, messages=[openai_pb2.ChatMessage(role="user")], **extra
    )
    params.messages[0].content.string_value = text
    return params


async def test_unary_chat_matches_upstream(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    upstreams: tuple[OpenAIUpstream, OpenAIUpstream],
) -> None:
    call = router.CreateChatCompletion(router_pb2.CreateChatCompletionRequest(params=_chat()))
    answer = await call
    assert answer.choices[0].message.content == "echo: hello gateway world"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == "chat"
    served = upstreams[0].served[-1]
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (
        served.prompt_tokens,
        served.completion_tokens,
    )
    assert dict(await call.initial_metadata())["x-switchboard-model"] == "chat"
    # The provider, not the client, supplied the upstream credentials and model id.
    request = upstreams[0].requests[-1]
    assert request.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert request.json is not None
    assert request.json["model"] == "up-chat"


async def test_typed_stream_concatenates_to_content(
    router: router_pb2_grpc.RouterServiceAsyncStub,
) -> None:
    params = _chat(stream_options=openai_pb2.StreamOptions(include_usage=True))
    chunks = [
        r.chunk
        async for r in router.StreamChatCompletion(
            router_pb2.StreamChatCompletionRequest(params=params)
        )
    ]
    text = "".join(c.delta.content for ch in chunks for c in ch.choices)
    assert text == "echo: hello gateway world"
    finishes = [c.finish_reason for ch in chunks for c in ch.choices if c.HasField("finish_reason")]
    assert finishes == ["stop"]
    assert chunks[-1].usage.completion_tokens == 4
    assert not chunks[-1].choices


async def test_sse_bytes_are_openai_events(router: router_pb2_grpc.RouterServiceAsyncStub) -> None:
    bodies = [
        b
        async for b in router.StreamChatCompletionSse(
            router_pb2.StreamChatCompletionSseRequest(params=_chat())
        )
    ]
    assert all(b.content_type == "text/event-stream" for b in bodies)
    events = [b.data for b in bodies]
    assert events[-1] == b"data: [DONE]\n\n"
    payloads = [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    assert all(e.endswith(b"\n\n") and e.startswith(b"data: {") for e in events[:-1])
    assert {p["object"] for p in payloads} == {"chat.completion.chunk"}
    # Without include_usage the client gets no usage chunk and no usage key.
    assert all("usage" not in p for p in payloads)
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"


async def test_unknown_model_is_not_found(router: router_pb2_grpc.RouterServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router.CreateChatCompletion(
            router_pb2.CreateChatCompletionRequest(params=_chat("nope"))
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason(err.value) == "MODEL_NOT_FOUND"


async def test_invalid_request_names_the_field(
    router: router_pb2_grpc.RouterServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router.CreateChatCompletion(
            router_pb2.CreateChatCompletionRequest(params=_chat(max_tokens=-5))
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_tokens" in (err.value.details() or "")


@pytest.mark.parametrize(
    ("behaviour", "code", "why"),
    [
        (Behaviour(mode="status", status=500), grpc.StatusCode.UNAVAILABLE, "UPSTREAM_ERROR"),
        (
            Behaviour(mode="status", status=400),
            grpc.StatusCode.INVALID_ARGUMENT,
            "UPSTREAM_INVALID_REQUEST",
        ),
        (
            Behaviour(mode="status", status=401),
            grpc.StatusCode.FAILED_PRECONDITION,
            "UPSTREAM_AUTH",
        ),
        (Behaviour(mode="hang"), grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT"),
    ],
)
async def test_upstream_failures_map_to_status(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    upstreams: tuple[OpenAIUpstream, OpenAIUpstream],
    behaviour: Behaviour,
    code: grpc.StatusCode,
    why: str,
) -> None:
    upstreams[0].behaviour = behaviour
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router.CreateChatCompletion(router_pb2.CreateChatCompletionRequest(params=_chat()))
    assert (err.value.code(), reason(err.value)) == (code, why)


async def test_a_dropped_connection_is_lost_and_tried_again_not_a_timeout(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    upstreams: tuple[OpenAIUpstream, OpenAIUpstream],
) -> None:
    """An upstream that closes the connection before answering (as a server
    closes an idle kept-alive connection just as a call reuses it) is a lost
    connection: tried again after a backoff, then 502-class UPSTREAM_ERROR. The
    openai SDK's aiohttp transport reports it as a connect timeout, which the
    router would neither retry nor report truly."""
    upstreams[0].behaviour = Behaviour(mode="reset_after")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router.CreateChatCompletion(router_pb2.CreateChatCompletionRequest(params=_chat()))
    assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_ERROR")
    assert "lost the connection to provider 'primary'" in (err.value.details() or "")
    assert len(upstreams[0].requests) == 3  # SWITCHBOARD_MAX_ATTEMPTS' default
    upstreams[0].behaviour = Behaviour()
    answer = await router.CreateChatCompletion(
        router_pb2.CreateChatCompletionRequest(params=_chat())
    )
    assert answer.choices[0].message.content == "echo: hello gateway world"


async def test_a_refused_connection_is_lost_not_a_timeout(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    upstreams: tuple[OpenAIUpstream, OpenAIUpstream],
) -> None:
    await upstreams[0].stop()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router.CreateChatCompletion(router_pb2.CreateChatCompletionRequest(params=_chat()))
    assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_ERROR")
    assert "Cannot connect to host" in (err.value.details() or "")


async def test_upstream_rate_limit_carries_retry_info(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    upstreams: tuple[OpenAIUpstream, OpenAIUpstream],
) -> None:
    upstreams[0].behaviour = Behaviour(mode="status", status=429, retry_after=7)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router.CreateChatCompletion(router_pb2.CreateChatCompletionRequest(params=_chat()))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_delay_s(err.value) == 7


async def test_failed_deployment_falls_over_to_the_next(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    upstreams: tuple[OpenAIUpstream, OpenAIUpstream],
) -> None:
    primary, backup = upstreams
    primary.behaviour = Behaviour(mode="status", status=503)
    call = router.CreateChatCompletion(
        router_pb2.CreateChatCompletionRequest(params=_chat("chat-ha"))
    )
    answer = await call
    assert answer.choices[0].message.content == "echo: hello gateway world"
    assert len(backup.served) == 1
    assert (
        dict(await call.initial_metadata())["x-switchboard-deployment"] == "chat-ha.backup.up-chat"
    )


async def test_reset_mid_stream_ends_with_error_after_chunks(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    upstreams: tuple[OpenAIUpstream, OpenAIUpstream],
) -> None:
    seen = threading.Event()
    upstreams[0].behaviour = Behaviour(mode="reset_after", reset_after_chunks=2, reset_when=seen)
    received: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for r in router.StreamChatCompletion(
            router_pb2.StreamChatCompletionRequest(params=_chat())
        ):
            received.extend(c.delta.content for c in r.chunk.choices)
            if "".join(received):
                seen.set()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "".join(received).startswith("echo: ")
    # No retry once output reached the client: one upstream attempt only.
    assert len(upstreams[0].requests) == 1


async def test_sse_error_after_first_byte_is_an_error_event(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    upstreams: tuple[OpenAIUpstream, OpenAIUpstream],
) -> None:
    seen = threading.Event()
    upstreams[0].behaviour = Behaviour(mode="reset_after", reset_after_chunks=1, reset_when=seen)
    events = []
    async for b in router.StreamChatCompletionSse(
        router_pb2.StreamChatCompletionSseRequest(params=_chat())
    ):
        events.append(b.data)
        seen.set()
    last = json.loads(events[-1].removeprefix(b"data: "))
    assert last["error"]["code"] == "upstream_error"
    assert b"data: [DONE]\n\n" not in events


async def test_client_cancel_closes_the_upstream_request(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    upstreams: tuple[OpenAIUpstream, OpenAIUpstream],
) -> None:
    primary = upstreams[0]
    primary.behaviour = Behaviour(mode="slow", chunk_delay_s=0.2)
    call = router.StreamChatCompletion(router_pb2.StreamChatCompletionRequest(params=_chat()))
    first = await call.read()
    assert isinstance(first, router_pb2.StreamChatCompletionResponse)
    call.cancel()
    assert await primary.wait_for(lambda: primary.disconnects == 1, within_s=2.0)
    assert primary.in_flight == 0


async def test_embeddings(router: router_pb2_grpc.RouterServiceAsyncStub) -> None:
    params = openai_pb2.EmbeddingParams(model="embed")
    params.input.list_value.extend(["one", "two"])
    result = await router.CreateEmbedding(router_pb2.CreateEmbeddingRequest(params=params))
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding.list_value.values) == 8
    assert result.model == "embed"


async def test_models_list_and_get(router: router_pb2_grpc.RouterServiceAsyncStub) -> None:
    listed = await router.ListModels(router_pb2.ListModelsRequest())
    assert listed.object == "list"
    assert [m.id for m in listed.data] == ["chat", "chat-ha", "embed"]
    model = await router.GetModel(router_pb2.GetModelRequest(model="chat"))
    assert (model.id, model.object) == ("chat", "model")


async def test_keys_gate_models(
    upstreams: tuple[OpenAIUpstream, OpenAIUpstream],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOOPBACK_PROVIDER_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("TEAM_A_KEY", "team-a-secret")
    keys = [{"name": "team-a", "key_env": "TEAM_A_KEY", "models": ["chat"]}]
    async with services(_config(*upstreams, keys=keys), tmp_path, monkeypatch) as settings:
        stub = await _stub(settings)
        request = router_pb2.CreateChatCompletionRequest(params=_chat())
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.CreateChatCompletion(request)
        assert reason(missing.value) == "MISSING_API_KEY"
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.CreateChatCompletion(request, metadata=(("authorization", "Bearer nope"),))
        assert bad.value.code() == grpc.StatusCode.UNAUTHENTICATED
        good = (("authorization", "Bearer team-a-secret"),)
        answer = await stub.CreateChatCompletion(request, metadata=good)
        assert answer.choices[0].message.content.startswith("echo:")
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.CreateChatCompletion(
                router_pb2.CreateChatCompletionRequest(params=_chat("chat-ha")),
                metadata=(("x-api-key", "team-a-secret"),),
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        listed = await stub.ListModels(router_pb2.ListModelsRequest(), metadata=good)
        assert [m.id for m in listed.data] == ["chat"]


async def test_deadline_is_passed_down(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    upstreams: tuple[OpenAIUpstream, OpenAIUpstream],
) -> None:
    upstreams[0].behaviour = Behaviour(mode="hang")
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router.CreateChatCompletion(
            router_pb2.CreateChatCompletionRequest(params=_chat()), timeout=0.3
        )
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert loop.time() - start < 1.0
    primary = upstreams[0]
    assert await primary.wait_for(lambda: primary.in_flight == 0, within_s=2.0)
