"""The provider's HTTP client against a real HTTP/1.1 server that closes kept-
alive connections under it, as llama.cpp's server does after every streamed
answer: a request that went out on a pooled connection the server had closed
is sent again on a new one; a request dropped on a new connection is not sent
twice, and is a lost connection (UPSTREAM_ERROR), not a timeout."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator

import openai
import pytest
import pytest_asyncio

from switchboard_common.config import ProviderConfig
from switchboard_common.errors import R
from switchboard_provider.adapters.anthropic.adapter import AnthropicAdapter
from switchboard_provider.adapters.openai_compat import OpenAIAdapter

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

_ANSWERS = {
    "/v1/chat/completions": {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    },
    "/v1/messages": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    },
}


class ClosingServer:
    """Answers a connection's first request and drops the connection when a
    second one comes on it; with drop_first, drops every connection on its
    first request. Records (connection, request on it) for each request."""

    def __init__(self, *, drop_first: bool = False) -> None:
        self.drop_first = drop_first
        self.requests: list[tuple[int, int]] = []
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = next(self._ids)
        try:
            for number in itertools.count(1):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
                length = {k.lower(): v for k, v in headers.items()}.get("content-length", "0")
                await reader.readexactly(int(length))
                self.requests.append((connection, number))
                if self.drop_first or number > 1:
                    writer.transport.abort()
                    return
                body = json.dumps(_ANSWERS[path]).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        finally:
            writer.close()


@pytest_asyncio.fixture
async def server() -> AsyncIterator[ClosingServer]:
    running = ClosingServer()
    await running.start()
    yield running
    await running.stop()


def _openai(url: str) -> OpenAIAdapter:
    return OpenAIAdapter(ProviderConfig(name="p", kind="openai", base_url=f"{url}/v1"))


async def _chat(adapter: OpenAIAdapter) -> str | None:
    answer = await adapter.client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hello"}]
    )
    return answer.choices[0].message.content


async def test_a_request_on_a_connection_the_server_closed_goes_again_on_a_new_one(
    server: ClosingServer,
) -> None:
    adapter = _openai(server.url)
    try:
        assert await _chat(adapter) == "hi"
        assert await _chat(adapter) == "hi"  # pooled connection 1 was dropped: sent again
        assert await _chat(adapter) == "hi"
    finally:
        await adapter.close()
    assert server.requests == [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1)]


async def test_the_anthropic_kind_sends_it_again_too(server: ClosingServer) -> None:
    adapter = AnthropicAdapter(ProviderConfig(name="a", kind="anthropic", base_url=server.url))
    try:
        for _ in range(2):
            answer = await adapter.client.messages.create(
                model="m", max_tokens=8, messages=[{"role": "user", "content": "hello"}]
            )
            assert answer.content[0].type == "text"
    finally:
        await adapter.close()
    assert server.requests == [(1, 1), (1, 2), (2, 1)]


async def test_a_request_dropped_on_a_new_connection_is_not_sent_twice() -> None:
    server = ClosingServer(drop_first=True)
    await server.start()
    adapter = _openai(server.url)
    try:
        with pytest.raises(openai.APIConnectionError) as err:
            await _chat(adapter)
    finally:
        await adapter.close()
        await server.stop()
    assert server.requests == [(1, 1)]
    # A lost connection, which the router retries; the SDK calls it a timeout.
    mapped = adapter._map_error(err.value)
    assert mapped.reason == R.ERROR_REASON_UPSTREAM_ERROR
    assert "lost the connection to provider 'p'" in str(mapped)
