"""The loopback OpenAI upstream must look like api.openai.com to the official SDK."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest
import pytest_asyncio

from tests.conftest import Loopbacks
from tests.support.openai_upstream import Behaviour, OpenAIUpstream, run_in_thread

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "gpt-test"
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello there world"},
]


@pytest_asyncio.fixture
async def upstream(loopbacks: Loopbacks) -> OpenAIUpstream:
    """In the test's loop, accepting any key."""
    return await loopbacks.openai(api_key=None)


@pytest_asyncio.fixture
async def client(upstream: OpenAIUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=upstream.base_url, api_key="test", max_retries=0) as sdk:
        yield sdk


def _problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.asyncio
async def test_chat_non_stream(upstream: OpenAIUpstream, client: openai.AsyncOpenAI) -> None:
    raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    completion = raw.parse()

    assert raw.headers["x-request-id"].startswith("req_")
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == MODEL
    assert completion.system_fingerprint == "fp_loopback"
    assert completion.choices[0].message.content == "echo: hello there world"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    # "be brief" + "hello there world" -> 5 words; "echo: hello there world" -> 4.
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 4)
    assert completion.usage.total_tokens == 9

    [served] = upstream.served
    assert served.id == completion.id
    assert (served.stream, served.completed, served.usage_reported) == (False, True, True)
    [recorded] = upstream.requests
    assert (recorded.method, recorded.path) == ("POST", "/v1/chat/completions")
    assert recorded.headers["authorization"] == "Bearer test"
    assert recorded.json is not None
    assert recorded.json["messages"] == MESSAGES


@pytest.mark.asyncio
async def test_chat_stream_deltas_and_usage(
    upstream: OpenAIUpstream, client: openai.AsyncOpenAI
) -> None:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    assert {c.id for c in chunks} == {upstream.served[0].id}
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "echo: hello there world"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (5, 4)

    [served] = upstream.served
    assert (served.stream, served.chunks_sent, served.completed) == (True, 4, True)
    assert served.usage_reported


@pytest.mark.asyncio
async def test_stream_without_include_usage_reports_none(
    upstream: OpenAIUpstream, client: openai.AsyncOpenAI
) -> None:
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]

    assert all(c.usage is None and len(c.choices) == 1 for c in chunks)
    assert upstream.served[0].completed
    assert not upstream.served[0].usage_reported


@pytest.mark.asyncio
async def test_n_choices(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2)

    assert [c.index for c in completion.choices] == [0, 1]
    assert {c.message.content for c in completion.choices} == {"echo: hello there world"}
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 8


@pytest.mark.asyncio
async def test_max_tokens_truncates_with_length(client: openai.AsyncOpenAI) -> None:
    legacy = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    current = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_completion_tokens=2
    )
    for completion in (legacy, current):
        assert completion.choices[0].message.content == "echo: hello"
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage is not None
        assert completion.usage.completion_tokens == 2


@pytest.mark.asyncio
async def test_array_content_joins_text_parts(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "one two"}, {"type": "text", "text": "three"}],
            }
        ],
    )

    assert completion.choices[0].message.content == "echo: one two three"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 3


@pytest.mark.asyncio
async def test_legacy_completions(upstream: OpenAIUpstream, client: openai.AsyncOpenAI) -> None:
    completion = await client.completions.create(model=MODEL, prompt="say this")
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "echo: say this"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 3)

    stream = await client.completions.create(
        model=MODEL, prompt=["say this"], stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "echo: say this"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 5
    assert [s.completed for s in upstream.served] == [True, True]


@pytest.mark.asyncio
async def test_embeddings_float_and_base64_agree(client: openai.AsyncOpenAI) -> None:
    inputs = ["alpha beta", "gamma"]
    as_float = await client.embeddings.create(model=MODEL, input=inputs, encoding_format="float")
    # The SDK asks for base64 when no format is given and decodes it itself.
    by_default = await client.embeddings.create(model=MODEL, input=inputs)
    as_base64 = await client.embeddings.create(model=MODEL, input=inputs, encoding_format="base64")

    assert [d.index for d in as_float.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in as_float.data)
    assert as_float.data[0].embedding != as_float.data[1].embedding
    assert [d.embedding for d in by_default.data] == [d.embedding for d in as_float.data]
    # An explicit base64 request is handed back undecoded.
    # The SDK's type says list[float]; at runtime it is the raw string.
    encoded: object = as_base64.data[0].embedding
    assert isinstance(encoded, str)
    assert list(struct.unpack("<8f", base64.b64decode(encoded))) == as_float.data[0].embedding
    assert as_float.usage.prompt_tokens == 3


@pytest.mark.asyncio
async def test_models(client: openai.AsyncOpenAI) -> None:
    models = [m.id async for m in client.models.list()]
    assert models == ["loopback-model"]


@pytest.mark.asyncio
async def test_status_modes_raise_sdk_errors(
    upstream: OpenAIUpstream, client: openai.AsyncOpenAI
) -> None:
    upstream.behaviour = Behaviour(mode="status", status=500)
    with pytest.raises(openai.InternalServerError) as server_error:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert server_error.value.status_code == 500
    assert server_error.value.request_id is not None
    assert server_error.value.request_id.startswith("req_")

    upstream.behaviour = Behaviour(mode="status", status=429, retry_after=2)
    with pytest.raises(openai.RateLimitError) as rate_limited:
        await client.embeddings.create(model=MODEL, input="x")
    assert rate_limited.value.response.headers["retry-after"] == "2"
    assert rate_limited.value.code == "rate_limit_exceeded"
    assert rate_limited.value.type == "requests"
    assert upstream.served == []


@pytest.mark.asyncio
async def test_api_key_enforced() -> None:
    async with OpenAIUpstream(api_key="sk-right") as server:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="sk-wrong", max_retries=0
        ) as wrong:
            with pytest.raises(openai.AuthenticationError) as denied:
                await wrong.models.list()
        assert denied.value.code == "invalid_api_key"
        assert denied.value.message.startswith("Error code: 401")
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="sk-right", max_retries=0
        ) as right:
            assert [m.id async for m in right.models.list()] == ["loopback-model"]


@pytest.mark.asyncio
async def test_reset_after_streams_n_chunks_then_drops(
    upstream: OpenAIUpstream, client: openai.AsyncOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.behaviour = Behaviour(mode="reset_after", reset_after_chunks=2)
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    received: list[str] = []

    async def consume() -> None:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIConnectionError):
        await consume()

    assert received == ["", "echo: ", "hello "]  # role chunk, then two content chunks
    [served] = upstream.served
    assert (served.chunks_sent, served.completed, served.usage_reported) == (2, False, False)
    # The server hung up, not the client.
    assert upstream.disconnects == 0

    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert len(upstream.served) == 1
    assert _problems(caplog) == []


@pytest.mark.asyncio
async def test_hang_times_out_and_counts_disconnect(
    upstream: OpenAIUpstream, client: openai.AsyncOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.behaviour = Behaviour(mode="hang")
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, timeout=0.5)

    assert await upstream.wait_for(lambda: upstream.disconnects == 1, within_s=2.0)
    assert await upstream.wait_for(lambda: upstream.in_flight == 0, within_s=2.0)
    assert upstream.served == []
    assert _problems(caplog) == []


@pytest.mark.asyncio
async def test_client_leaving_mid_stream_counts_disconnect(
    upstream: OpenAIUpstream, client: openai.AsyncOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.behaviour = Behaviour(chunk_delay_s=0.05)
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    async for _ in stream:
        break
    await stream.close()

    assert await upstream.wait_for(lambda: upstream.disconnects == 1, within_s=2.0)
    assert not upstream.served[0].completed
    assert _problems(caplog) == []


@pytest.mark.asyncio
async def test_slow_delays_first_byte(upstream: OpenAIUpstream, client: openai.AsyncOpenAI) -> None:
    upstream.behaviour = Behaviour(mode="slow", first_byte_delay_s=0.2)
    started = time.monotonic()
    completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert time.monotonic() - started >= 0.2
    assert completion.choices[0].message.content == "echo: hello there world"


@pytest.mark.asyncio
async def test_stop_cancels_hanging_requests_promptly(caplog: pytest.LogCaptureFixture) -> None:
    server = OpenAIUpstream()
    await server.start()
    server.behaviour = Behaviour(mode="hang")
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0) as sdk:
        pending = asyncio.create_task(sdk.chat.completions.create(model=MODEL, messages=MESSAGES))
        assert await server.wait_for(lambda: server.in_flight == 1, within_s=2.0)
        assert server.open_connections == 1

        started = time.monotonic()
        await server.stop()
        assert time.monotonic() - started < 1.0
        with pytest.raises(openai.APIConnectionError):
            await pending

    assert server.open_connections == 0
    assert server.disconnects == 0  # shutting down is not the client's doing
    assert _problems(caplog) == []


@pytest.mark.asyncio
async def test_raw_sse_framing(upstream: OpenAIUpstream) -> None:
    async with httpx.AsyncClient(base_url=upstream.base_url) as http:
        response = await http.post(
            "/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-request-id"].startswith("req_")
    body = response.content
    assert body.startswith(b'data: {"id":"chatcmpl-')
    assert body.endswith(b"}\n\ndata: [DONE]\n\n")
    events = body.split(b"\n\n")
    assert events[-1] == b""
    assert events[-2] == b"data: [DONE]"
    payloads = []
    for event in events[:-2]:
        assert event.startswith(b"data: ")
        raw = event.removeprefix(b"data: ")
        decoded = json.loads(raw)
        # Compact JSON, exactly as OpenAI frames it.
        assert json.dumps(decoded, separators=(",", ":")).encode() == raw
        payloads.append(decoded)

    created = payloads[0]["created"]
    assert [p["choices"][0]["delta"] for p in payloads[:-1]] == [
        {"role": "assistant", "content": ""},
        {"content": "echo: "},
        {"content": "hi"},
        {},
    ]
    assert payloads[0] == {
        "id": payloads[0]["id"],
        "object": "chat.completion.chunk",
        "created": created,
        "model": MODEL,
        "system_fingerprint": "fp_loopback",
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
        "usage": None,
    }
    assert payloads[-2]["choices"][0]["finish_reason"] == "stop"
    assert payloads[-1]["choices"] == []
    assert payloads[-1]["usage"] == {
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


@pytest.mark.asyncio
async def test_malformed_json_and_unknown_path(upstream: OpenAIUpstream) -> None:
    async with httpx.AsyncClient(base_url=upstream.base_url) as http:
        bad = await http.post(
            "/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
        )
        missing = await http.get("/nowhere")

    assert bad.status_code == 400
    assert set(bad.json()["error"]) == {"message", "type", "param", "code"}
    assert bad.json()["error"]["type"] == "invalid_request_error"
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "Invalid URL (GET /v1/nowhere)"
    assert missing.headers["x-request-id"].startswith("req_")
    assert upstream.requests[0].json is None
    assert upstream.requests[0].body == b"{nope"


def test_sync_sdk_through_thread_runner(caplog: pytest.LogCaptureFixture) -> None:
    with (
        run_in_thread(OpenAIUpstream()) as server,
        openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0) as sdk,
    ):
        completion = sdk.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert completion.choices[0].message.content == "echo: hello there world"
        with sdk.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True) as stream:
            text = "".join(c.choices[0].delta.content or "" for c in stream)
        assert text == "echo: hello there world"

        server.behaviour = Behaviour(mode="hang")
        with pytest.raises(openai.APITimeoutError):
            sdk.chat.completions.create(model=MODEL, messages=MESSAGES, timeout=0.3)
        assert server.wait_until(lambda: server.disconnects == 1, within_s=2.0)

    assert server.open_connections == 0
    assert _problems(caplog) == []


@pytest.mark.asyncio
async def test_thread_runner_reports_start_failure(upstream: OpenAIUpstream) -> None:
    clash = OpenAIUpstream(port=upstream.port)
    with pytest.raises(OSError, match=r"(?i)address already in use"), run_in_thread(clash):
        pytest.fail("a second server must not bind the same port")


def test_standalone_process_prints_listening_line() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.openai_upstream", "--port", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        prefix, base_url = line.split(" ")
        assert prefix == "LISTENING"
        assert base_url.startswith("http://127.0.0.1:")
        assert base_url.endswith("/v1")
        assert httpx.get(f"{base_url}/models").json()["data"][0]["id"] == "loopback-model"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()
