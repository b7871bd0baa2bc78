"""End to end: the official openai SDK → Envoy edge → router → provider →
a loopback server speaking OpenAI's wire format, and back."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import openai
import pytest

from switchboard.common.v1 import openai_pb2
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_stack.components import SERVICES
from switchboard_stack.harness import Stack
from tests.conftest import (
    GEMINI_UPSTREAM_KEY,
    UPSTREAM_KEY,
    StartStack,
    loopback_provider,
)
from tests.support.gemini_upstream import GeminiUpstream
from tests.support.openai_upstream import Behaviour, OpenAIUpstream

pytestmark = pytest.mark.e2e

PROVIDER_KEY = UPSTREAM_KEY
GEMINI_KEY = GEMINI_UPSTREAM_KEY
PROMPT = "tell me about the switchboard"
REPLY = f"echo: {PROMPT}"


@pytest.fixture(scope="module")
def stack(
    upstream: OpenAIUpstream, gemini_upstream: GeminiUpstream, start_stack: StartStack
) -> Stack:
    config = {
        "providers": [
            loopback_provider("loopback", upstream, "E2E_PROVIDER_KEY", timeout_s=1.5),
            {"name": "mock", "kind": "mock"},
            loopback_provider("google", gemini_upstream, "E2E_GEMINI_KEY", timeout_s=1.5),
        ],
        "models": [
            {
                "name": "fast-chat",
                "capabilities": ["vision"],
                "deployments": [{"provider": "loopback", "model": "gpt-loop"}],
            },
            {
                "name": "mock-chat",
                "capabilities": ["vision"],
                "deployments": [{"provider": "mock", "model": "mock-echo"}],
            },
            {"name": "gemini-chat", "deployments": [{"provider": "google", "model": "gem-loop"}]},
            {
                "name": "embed",
                "kind": "embedding",
                "deployments": [{"provider": "loopback", "model": "emb-loop"}],
            },
        ],
    }
    env = {
        "E2E_PROVIDER_KEY": PROVIDER_KEY,
        "E2E_GEMINI_KEY": GEMINI_KEY,
        # Secrets must stay out of logs even at DEBUG (test_no_secret_in_any_log).
        "SWITCHBOARD_LOG_LEVEL": "DEBUG",
        # These tests fail the one loopback deployment on purpose, many times in a row.
        "SWITCHBOARD_BREAKER_CONSECUTIVE_FAILURES": "1000",
    }
    return start_stack(config, env)


@pytest.fixture(autouse=True)
def _fresh_upstream(upstream: OpenAIUpstream) -> None:
    upstream.reset()


@pytest.fixture
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{stack.edge_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def _messages() -> Any:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": PROMPT}]


def test_sync_non_stream(client: openai.OpenAI, upstream: OpenAIUpstream) -> None:
    completion = client.chat.completions.create(model="fast-chat", messages=_messages())
    assert completion.object == "chat.completion"
    assert completion.model == "fast-chat"
    assert completion.choices[0].message.content == REPLY
    assert completion.choices[0].finish_reason == "stop"
    served = upstream.served[-1]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == served.prompt_tokens
    assert completion.usage.completion_tokens == served.completion_tokens
    assert completion.usage.total_tokens == served.prompt_tokens + served.completion_tokens


def test_sync_stream_with_usage(client: openai.OpenAI, upstream: OpenAIUpstream) -> None:
    stream = client.chat.completions.create(
        model="fast-chat",
        messages=_messages(),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == upstream.served[-1].completion_tokens
    # One event per upstream chunk: nothing was coalesced.
    assert len([c for c in chunks if c.choices]) == upstream.served[-1].chunks_sent + 2


def test_stream_without_usage_sends_none(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model="fast-chat", messages=_messages(), stream=True)
    )
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


@pytest.mark.asyncio
async def test_async_stream_and_non_stream(stack: Stack) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{stack.edge_url}/v1", api_key="unused", max_retries=0
    ) as client:
        completion = await client.chat.completions.create(model="fast-chat", messages=_messages())
        assert completion.choices[0].message.content == REPLY
        stream = await client.chat.completions.create(
            model="fast-chat",
            messages=_messages(),
            stream=True,
            stream_options={"include_usage": True},
        )
        text = ""
        usage = None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            usage = chunk.usage or usage
        assert text == REPLY
        assert usage is not None
        assert usage.total_tokens > 0


def test_sse_bytes_on_the_wire(stack: Stack) -> None:
    body = {"model": "fast-chat", "messages": _messages(), "stream": True}
    with httpx.stream("POST", f"{stack.edge_url}/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        raw = b"".join(response.iter_raw())
    events = raw.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    for event in events[:-2]:
        assert event.startswith(b"data: {")
        assert json.loads(event[6:])["object"] == "chat.completion.chunk"


def test_legacy_completions(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="fast-chat", prompt="say hi")
    assert completion.choices[0].text == "echo: say hi"
    text = "".join(
        c.choices[0].text
        for c in client.completions.create(model="fast-chat", prompt="say hi", stream=True)
        if c.choices
    )
    assert text == "echo: say hi"


def test_embeddings_float_and_base64(client: openai.OpenAI) -> None:
    floats = client.embeddings.create(model="embed", input=["a", "b"], encoding_format="float")
    default = client.embeddings.create(model="embed", input=["a", "b"])  # SDK asks for base64
    assert [d.embedding for d in floats.data] == [d.embedding for d in default.data]
    assert len(floats.data[0].embedding) == 8


def test_models(client: openai.OpenAI) -> None:
    # The registry lists models by name.
    assert [m.id for m in client.models.list()] == [
        "embed",
        "fast-chat",
        "gemini-chat",
        "mock-chat",
    ]
    assert client.models.retrieve("mock-chat").owned_by == "switchboard-mock"


def test_mock_provider_is_labelled(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="mock-chat", messages=_messages())
    assert completion.choices[0].message.content == f"[mock] {PROMPT}"
    assert completion.system_fingerprint == "switchboard-mock"


def test_healthz(stack: Stack) -> None:
    reply = httpx.get(f"{stack.edge_url}/healthz")
    assert reply.status_code == 200
    assert reply.json()["status"] == "ok"


def _error(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    return error


def test_unknown_model_is_404(client: openai.OpenAI, stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=_messages())
    assert err.value.status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=_messages(), stream=True)
    raw = httpx.post(
        f"{stack.edge_url}/v1/chat/completions",
        json={"model": "no-such-model", "messages": _messages()},
    )
    assert _error(raw)["code"] == "model_not_found"


@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"model": "fast-chat", "messages": "hello"}', b'{"model": "fast-chat"}'],
)
def test_malformed_requests_are_400(stack: Stack, body: bytes) -> None:
    raw = httpx.post(
        f"{stack.edge_url}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert raw.status_code == 400
    assert _error(raw)["type"] == "invalid_request_error"


def test_upstream_500_is_502(client: openai.OpenAI, upstream: OpenAIUpstream) -> None:
    upstream.behaviour = Behaviour(mode="status", status=500)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="fast-chat", messages=_messages())
    assert err.value.status_code == 502
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="fast-chat", messages=_messages(), stream=True)
    assert err.value.status_code == 502


def test_upstream_hang_is_504_within_timeout(
    client: openai.OpenAI, upstream: OpenAIUpstream
) -> None:
    upstream.behaviour = Behaviour(mode="hang")
    start = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="fast-chat", messages=_messages())
    elapsed = time.monotonic() - start
    assert err.value.status_code == 504
    assert elapsed < 1.5 + 1.0  # the provider's timeout_s, plus slack for the hops


def test_failure_mid_stream_is_an_error_event(
    client: openai.OpenAI, upstream: OpenAIUpstream
) -> None:
    seen = threading.Event()
    upstream.behaviour = Behaviour(mode="reset_after", reset_after_chunks=2, reset_when=seen)
    received = ""
    with pytest.raises(openai.APIError) as err:
        for chunk in client.chat.completions.create(
            model="fast-chat", messages=_messages(), stream=True
        ):
            received += chunk.choices[0].delta.content or "" if chunk.choices else ""
            if received:
                seen.set()
    assert received.startswith("echo:")
    assert "lost the connection" in err.value.message


def test_client_disconnect_cancels_upstream(stack: Stack, upstream: OpenAIUpstream) -> None:
    upstream.behaviour = Behaviour(mode="slow", chunk_delay_s=0.3)
    body = {"model": "fast-chat", "messages": _messages(), "stream": True}
    with httpx.stream("POST", f"{stack.edge_url}/v1/chat/completions", json=body) as response:
        first = next(response.iter_raw())
        assert first.startswith(b"data: ")
    assert upstream.wait_until(lambda: upstream.disconnects == 1, within_s=3.0)
    assert upstream.wait_until(lambda: upstream.in_flight == 0, within_s=3.0)


def test_grpc_router_gives_the_same_answer(stack: Stack, client: openai.OpenAI) -> None:
    via_edge = client.chat.completions.create(model="fast-chat", messages=_messages())
    with grpc.insecure_channel(stack.router_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        params = openai_pb2.ChatCompletionParams(model="fast-chat")
        for m in _messages():
            message = params.messages.add(role=m["role"])
            message.content.string_value = m["content"]
        direct = stub.CreateChatCompletion(
            router_pb2.CreateChatCompletionRequest(params=params), timeout=10
        )
        chunks = list(
            stub.StreamChatCompletion(
                router_pb2.StreamChatCompletionRequest(params=params), timeout=10
            )
        )
    assert direct.choices[0].message.content == via_edge.choices[0].message.content
    assert direct.usage.total_tokens == via_edge.usage.total_tokens if via_edge.usage else False
    assert "".join(c.delta.content for r in chunks for c in r.chunk.choices) == REPLY


def test_openai_and_gemini_kinds_answer_alike(client: openai.OpenAI) -> None:
    """The same SDK call, served by an OpenAI-compatible upstream and by Gemini."""
    via_openai = client.chat.completions.create(model="fast-chat", messages=_messages())
    via_gemini = client.chat.completions.create(model="gemini-chat", messages=_messages())
    assert via_gemini.choices[0].message.content == via_openai.choices[0].message.content
    assert via_gemini.choices[0].finish_reason == via_openai.choices[0].finish_reason
    assert via_gemini.usage == via_openai.usage

    def streamed(model: str) -> tuple[str, Any]:
        chunks = list(
            client.chat.completions.create(
                model=model,
                messages=_messages(),
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, chunks[-1].usage

    assert streamed("gemini-chat") == streamed("fast-chat")


def test_no_secret_in_any_log(stack: Stack, client: openai.OpenAI) -> None:
    """Run at DEBUG (see the stack fixture): provider keys never reach a log."""
    client.chat.completions.create(model="fast-chat", messages=_messages())
    client.chat.completions.create(model="gemini-chat", messages=_messages())
    for component in (*SERVICES, "envoy", "broker"):
        log = stack.log(component)
        assert PROVIDER_KEY not in log, component
        assert GEMINI_KEY not in log, component


def test_oversized_body_is_413(stack: Stack) -> None:
    content = "x" * (33 * 1024 * 1024)
    raw = httpx.post(
        f"{stack.edge_url}/v1/chat/completions",
        json={"model": "fast-chat", "messages": [{"role": "user", "content": content}]},
        timeout=30,
    )
    assert raw.status_code == 413
    assert _error(raw)["code"] == "request_too_large"


def test_unknown_route_is_404_in_openai_shape(stack: Stack) -> None:
    raw = httpx.get(f"{stack.edge_url}/v1/no-such-thing")
    assert raw.status_code == 404
    assert _error(raw)["code"] == "unknown_url"


PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def test_vision_route_returns_recognised_objects(stack: Stack, upstream: OpenAIUpstream) -> None:
    answer = '{"objects": [{"name": "cat", "description": "a cat on a sofa"}]}'
    upstream.behaviour = Behaviour(reply=answer)
    reply = httpx.post(
        f"{stack.edge_url}/v1/vision/completions",
        files={"image": ("cat.png", PNG, "image/png")},
        data={"model": "fast-chat"},
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["objects"] == [{"name": "cat", "description": "a cat on a sofa"}]
    assert body["model"] == "fast-chat"
    assert len(body["recognition_id"]) == 36
    sent = upstream.requests[-1].json
    assert sent is not None
    parts = sent["messages"][-1]["content"]
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_vision_route_defaults_to_the_first_vision_model(
    stack: Stack, upstream: OpenAIUpstream
) -> None:
    upstream.behaviour = Behaviour(reply='{"objects": []}')
    reply = httpx.post(
        f"{stack.edge_url}/v1/vision/completions", files={"image": ("x.png", PNG, "image/png")}
    )
    assert reply.status_code == 200, reply.text
    assert reply.json() | {"recognition_id": ""} == {
        "recognition_id": "",
        "objects": [],
        "model": "fast-chat",
    }


def test_vision_route_on_the_labelled_mock(stack: Stack) -> None:
    reply = httpx.post(
        f"{stack.edge_url}/v1/vision/completions",
        files={"image": ("x.png", PNG, "image/png")},
        data={"model": "mock-chat"},
    )
    assert reply.status_code == 200, reply.text
    [only] = reply.json()["objects"]
    assert only["description"].startswith("[mock] a image/png picture")


@pytest.mark.parametrize(
    ("files", "data", "status", "param"),
    [
        ({"other": ("x.png", PNG, "image/png")}, {"model": "fast-chat"}, 400, "image"),
        ({"image": ("x.txt", b"hello", "text/plain")}, {"model": "fast-chat"}, 400, "image"),
        ({"image": ("x.png", PNG, "image/png")}, {"model": "gemini-chat"}, 400, "model"),
        ({"image": ("x.png", PNG, "image/png")}, {"model": "nope"}, 404, "model"),
    ],
)
def test_vision_route_rejects_bad_input(
    stack: Stack, files: dict[str, Any], data: dict[str, str], status: int, param: str
) -> None:
    reply = httpx.post(f"{stack.edge_url}/v1/vision/completions", files=files, data=data)
    assert reply.status_code == status
    assert _error(reply)["param"] == param


def test_vision_route_maps_a_non_json_answer_to_502(stack: Stack, upstream: OpenAIUpstream) -> None:
    upstream.behaviour = Behaviour(reply="I see a cat")
    reply = httpx.post(
        f"{stack.edge_url}/v1/vision/completions",
        files={"image": ("cat.png", PNG, "image/png")},
        data={"model": "fast-chat"},
    )
    assert reply.status_code == 502
    assert "expected JSON" in _error(reply)["message"]


@pytest.mark.parametrize(
    "smuggled",
    [
        {"base_url": "http://169.254.169.254/"},
        {"api_base": "http://attacker.invalid/v1"},
        {"extra_headers": {"authorization": "Bearer x"}},
        {"messages": [{"role": "user", "content": "hi", "api_base": "http://x.invalid"}]},
    ],
)
def test_upstream_target_cannot_be_set_by_clients(
    stack: Stack, upstream: OpenAIUpstream, smuggled: dict[str, Any]
) -> None:
    body = {"model": "fast-chat", "messages": _messages(), **smuggled}
    reply = httpx.post(f"{stack.edge_url}/v1/chat/completions", json=body)
    assert reply.status_code == 400
    assert _error(reply)["type"] == "invalid_request_error"
    assert upstream.requests == []
