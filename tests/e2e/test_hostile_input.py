"""Hostile input at the edge, through Envoy to the real stack.

Every case gets the right status in OpenAI's error shape, crashes nothing, makes
no upstream call (zero requests at the loopback upstream, zero new TCP
connections to it, zero connections to an "attacker" canary whose address the
hostile bodies carry) and leaves no usage record (the router logs each record
at DEBUG on `switchboard.usage` with the request id; none carries the id of a
refused request).

Requests go out through http.client, which sends header bytes exactly as given
(non-UTF-8, control characters), unlike the SDKs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import quote, urlsplit

import grpc
import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.common.v1 import openai_pb2
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_common.errors import SwitchboardError
from switchboard_router.validation import validate_chat, validate_completion, validate_embedding
from switchboard_stack.envoy import MAX_BODY_BYTES
from switchboard_stack.harness import Stack, running_stack
from tests.conftest import UPSTREAM_KEY, eventually
from tests.support.openai_upstream import OpenAIUpstream, run_in_thread

pytestmark = pytest.mark.e2e

PROVIDER_KEY = UPSTREAM_KEY
FULL_KEY = "sk-hostile-full-0123456789abcdef"
LIMITED_KEY = "sk-hostile-limited-0123456789abcdef"
ADMIN_KEY = "hostile-admin-key-0123456789"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
# Models served by the loopback upstream: a request for one of them that gets
# through reaches the upstream, which the tests can see.
LOOPBACK_MODELS = ("fast-chat", "secret-chat", "secret", "embed")
USER = {"role": "user", "content": "hi"}
WAIT_S = 10.0


# -- a TCP canary ------------------------------------------------------------------


class TcpCanary:
    """Counts the TCP connections made to it. With a target it relays each one
    there (so a provider pointed at it reaches the real upstream through it);
    without, it reads whatever arrives and keeps it in `received`."""

    def __init__(self, target: tuple[str, int] | None = None) -> None:
        self.target = target
        self.accepted = 0
        self.received = b""
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        writers = [writer]
        try:
            if self.target is None:
                while chunk := await reader.read(65536):
                    self.received += chunk
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            writers.append(up_writer)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (ConnectionError, asyncio.CancelledError):
            pass  # stop() cancels the relays it waits for
        finally:
            for each in writers:
                each.close()
                with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                    await each.wait_closed()
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(65536):
        writer.write(chunk)
        await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


# -- the stack ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def relay(upstream: OpenAIUpstream) -> Iterator[TcpCanary]:
    with run_in_thread(TcpCanary(target=("127.0.0.1", upstream.port))) as server:
        yield server


@pytest.fixture(scope="module")
def attacker() -> Iterator[TcpCanary]:
    with run_in_thread(TcpCanary()) as server:
        yield server


@pytest.fixture(scope="module")
def stack(relay: TcpCanary, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = {
        "providers": [
            {
                "name": "loopback",
                "kind": "openai",
                "base_url": relay.url,
                "api_key_env": "HOSTILE_PROVIDER_KEY",
                "timeout_s": 5,
            },
            {"name": "mock", "kind": "mock"},
        ],
        "models": [
            {
                "name": "mock-chat",
                "aliases": ["mc"],
                "deployments": [{"provider": "mock", "model": "mock-echo"}],
            },
            {
                "name": "mock-embed",
                "kind": "embedding",
                "deployments": [{"provider": "mock", "model": "mock-embed"}],
            },
            {"name": "fast-chat", "deployments": [{"provider": "loopback", "model": "gpt-loop"}]},
            {
                "name": "secret-chat",
                "aliases": ["secret"],
                "deployments": [{"provider": "loopback", "model": "gpt-loop"}],
            },
            {
                "name": "embed",
                "kind": "embedding",
                "deployments": [{"provider": "loopback", "model": "emb-loop"}],
            },
        ],
        "keys": [
            {"name": "full", "key_env": "HOSTILE_FULL_KEY"},
            {
                "name": "limited",
                "key_env": "HOSTILE_LIMITED_KEY",
                "models": ["mock-chat", "mock-embed", "fast-chat", "embed"],
            },
        ],
    }
    env = {
        "HOSTILE_PROVIDER_KEY": PROVIDER_KEY,
        "HOSTILE_FULL_KEY": FULL_KEY,
        "HOSTILE_LIMITED_KEY": LIMITED_KEY,
        "SWITCHBOARD_ADMIN_KEY": ADMIN_KEY,
        # Usage records are logged at DEBUG: that is how "no usage event" is checked.
        "SWITCHBOARD_LOG_LEVEL": "DEBUG",
    }
    with running_stack(config, tmp_path_factory.mktemp("hostile"), env) as running:
        yield running


# -- sending, and checking that nothing was served ------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def request_id(self) -> str:
        return self.headers.get("x-request-id", "")

    def error(self) -> dict[str, Any]:
        """The OpenAI error object; fails unless the body is exactly that shape."""
        assert self.headers.get("content-type", "").startswith("application/json"), self
        payload = json.loads(self.body)
        assert set(payload) == {"error"}, payload
        error: dict[str, Any] = payload["error"]
        assert set(error) == {"message", "type", "code", "param"}, error
        assert isinstance(error["message"], str)
        assert error["message"]
        assert isinstance(error["type"], str)
        return error


Headers = Mapping[str, str | bytes] | list[tuple[str, str | bytes]]


@dataclass
class Edge:
    stack: Stack
    upstream: OpenAIUpstream
    relay: TcpCanary
    attacker: TcpCanary
    relay_before: int = 0
    refused: list[str] = field(default_factory=list)

    def send(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Headers | None = None,
        key: str | None = FULL_KEY,
    ) -> Reply:
        url = urlsplit(self.stack.edge_url)
        conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=60)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            pairs = list(headers.items() if isinstance(headers, Mapping) else headers or [])
            sent = [(name.lower(), value) for name, value in pairs]
            names = {name for name, _ in sent}
            if key is not None and not names & {"authorization", "x-api-key"}:
                sent.append(("authorization", f"Bearer {key}"))
            if body is not None:
                if "content-type" not in names:
                    sent.append(("content-type", "application/json"))
                sent.append(("content-length", str(len(body))))
            for name, value in sent:
                conn.putheader(name, value)
            conn.endheaders(body)
            response = conn.getresponse()
            reply = Reply(
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        finally:
            conn.close()
        if reply.status != 200:
            self.refused.append(reply.request_id)
        return reply

    def post(
        self,
        path: str,
        payload: Any,
        headers: Headers | None = None,
        key: str | None = FULL_KEY,
    ) -> Reply:
        return self.send("POST", path, json.dumps(payload).encode(), headers, key)

    def refuse(self, status: int, code: str | None, reply: Reply) -> dict[str, Any]:
        assert reply.status == status, (reply.status, reply.body[:300])
        error = reply.error()
        assert error["code"] == code, error
        return error

    def _usage_request_ids(self) -> set[str]:
        ids = set()
        for line in self.stack.log("router").splitlines():
            if '"switchboard.usage"' not in line:
                continue
            with contextlib.suppress(ValueError):
                ids.add(str(json.loads(line).get("request_id")))
        return ids

    def assert_nothing_served(self) -> None:
        """No upstream request or connection, nothing at the attacker, no usage
        record for any refused request, and every component still running."""
        assert self.upstream.requests == []
        assert self.relay.accepted == self.relay_before
        assert self.attacker.accepted == 0
        assert self.attacker.received == b""
        # A request that is served is logged after every refused one before it:
        # once its record is in the log, theirs would be too.
        marker = self.post(CHAT, {"model": "mock-chat", "messages": [USER]})
        assert marker.status == 200, marker.body[:300]

        def logged() -> set[str]:
            ids = self._usage_request_ids()
            assert marker.request_id in ids, "not logged yet"
            return ids

        ids = eventually(logged, timeout=WAIT_S, what="the marker's usage record")
        assert not ids & set(self.refused), "a refused request left a usage record"
        for pid in self.stack.pids().values():
            os.kill(pid, 0)  # raises if a component died


@pytest.fixture
def edge(stack: Stack, upstream: OpenAIUpstream, relay: TcpCanary, attacker: TcpCanary) -> Edge:
    upstream.reset()
    return Edge(stack, upstream, relay, attacker, relay_before=relay.accepted)


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "fast-chat", "messages": [USER], **fields}


# -- bodies ------------------------------------------------------------------------

BAD_BODIES = [
    pytest.param(CHAT, b"hello", "invalid_request", id="not-json"),
    pytest.param(CHAT, b"{", "invalid_request", id="truncated-json"),
    pytest.param(CHAT, b"", "invalid_request", id="empty-body"),
    pytest.param(CHAT, b"null", "invalid_request", id="json-null"),
    pytest.param(CHAT, b"[1, 2]", "invalid_request", id="json-array"),
    pytest.param(CHAT, b'"fast-chat"', "invalid_request", id="json-string"),
    pytest.param(CHAT, b"\x1f\x8b\x08\x00garbage", "invalid_request", id="gzip-bytes"),
    pytest.param(
        CHAT,
        b'{"model": 5, "messages": [{"role": "user", "content": "hi"}]}',
        "invalid_request",
        id="model-number",
    ),
    pytest.param(
        CHAT,
        b'{"model": "fast-chat", "messages": {"role": "user"}}',
        "invalid_request",
        id="messages-object",
    ),
    pytest.param(
        CHAT,
        b'{"model": "fast-chat", "messages": "hello"}',
        "invalid_request",
        id="messages-string",
    ),
    pytest.param(
        CHAT,
        b'{"model": "fast-chat", "messages": [{"role": "user", "content": 42}]}',
        "invalid_request",
        id="content-number",
    ),
    pytest.param(
        CHAT,
        b'{"model": "fast-chat", "messages": [{"role": "user", "content": "hi"}],'
        b' "max_tokens": "ten"}',
        "invalid_request",
        id="max-tokens-string",
    ),
    pytest.param(
        CHAT,
        b'{"model": "fast-chat", "messages": [{"role": "user", "content": "hi"}], "n": [1]}',
        "invalid_request",
        id="n-array",
    ),
    pytest.param(
        CHAT,
        b'{"model": "mock-chat", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
        "invalid_request",
        id="stream-string",
    ),
    pytest.param(
        CHAT,
        b'{"model": "fast-chat", "messages": [{"role": "user", "content": "hi"}],'
        b' "temperature": 1e400}',
        "invalid_request",
        id="temperature-overflow",
    ),
    pytest.param(
        CHAT,
        b'{"model": "fast-chat", "stream": true, "stream": false, "messages": []}',
        "invalid_request",
        id="duplicate-key",
    ),
    pytest.param(
        CHAT,
        b'{"model": "fast-chat", "messages": [{"role": "user", "content": "\\ud800"}]}',
        "invalid_request",
        id="lone-surrogate-escape",
    ),
    pytest.param(
        CHAT,
        b'{"model": "fast-chat", "messages": [{"role": "user", "content": "hi \xff\xfe"}]}',
        "invalid_request",
        id="invalid-utf8-content",
    ),
    pytest.param(
        CHAT,
        b'{"model": "fast-chat\xc3", "messages": [{"role": "user", "content": "hi"}]}',
        "invalid_request",
        id="invalid-utf8-model",
    ),
    pytest.param(
        CHAT,
        b'{"model": "fast-chat", "messages": [{"role": "us\xe2\x28er", "content": "x"}]}',
        "invalid_request",
        id="invalid-utf8-role",
    ),
    pytest.param(
        CHAT,
        b'{"model": "fast-chat", "messages": [{"role": "user", "content": "\xc0\xaf"}]}',
        "invalid_request",
        id="overlong-utf8",
    ),
    pytest.param(
        CHAT,
        b'{"model": "fast-chat", "messages": [{"role": "user", "content": "hi"}], "\xff": 1}',
        "invalid_request",
        id="invalid-utf8-key",
    ),
    pytest.param(
        COMPLETIONS,
        b'{"model": "fast-chat", "prompt": [1e400]}',
        "invalid_request",
        id="prompt-overflow",
    ),
    pytest.param(
        EMBEDDINGS,
        b'{"model": "embed", "input": "\xed\xa0\x80"}',
        "invalid_request",
        id="embedding-utf8-surrogate",
    ),
]


@pytest.mark.parametrize(("path", "body", "code"), BAD_BODIES)
def test_malformed_bodies_are_400(edge: Edge, path: str, body: bytes, code: str) -> None:
    edge.refuse(400, code, edge.send("POST", path, body))
    edge.assert_nothing_served()


INVALID_FIELDS = [
    pytest.param(CHAT, _chat(max_tokens=-1), "max_tokens", id="max-tokens-negative"),
    pytest.param(CHAT, _chat(max_tokens=0), "max_tokens", id="max-tokens-zero"),
    pytest.param(CHAT, _chat(max_tokens=1_000_001), "max_tokens", id="max-tokens-over-limit"),
    pytest.param(CHAT, _chat(max_tokens=2**31), None, id="max-tokens-over-int32"),
    pytest.param(CHAT, _chat(max_tokens=10**30), None, id="max-tokens-huge"),
    pytest.param(CHAT, _chat(max_tokens=1.5), None, id="max-tokens-fraction"),
    pytest.param(
        CHAT, _chat(max_completion_tokens=-5), "max_completion_tokens", id="max-completion-neg"
    ),
    pytest.param(CHAT, _chat(n=17), "n", id="n-over-limit"),
    pytest.param(CHAT, _chat(n=0), "n", id="n-zero"),
    pytest.param(CHAT, _chat(n=-1), "n", id="n-negative"),
    pytest.param(CHAT, _chat(n=2**40), None, id="n-huge"),
    pytest.param(CHAT, _chat(temperature="NaN"), "temperature", id="temperature-nan"),
    pytest.param(CHAT, _chat(temperature=-1), "temperature", id="temperature-negative"),
    pytest.param(CHAT, _chat(top_p="Infinity"), "top_p", id="top-p-infinity"),
    pytest.param(
        CHAT, _chat(presence_penalty="NaN"), "presence_penalty", id="presence-penalty-nan"
    ),
    pytest.param(
        CHAT, _chat(frequency_penalty=9), "frequency_penalty", id="frequency-penalty-range"
    ),
    pytest.param(CHAT, _chat(logit_bias={"5": "Infinity"}), "logit_bias", id="logit-bias-inf"),
    pytest.param(CHAT, _chat(logit_bias={"abc": 1}), "logit_bias", id="logit-bias-not-token"),
    pytest.param(CHAT, _chat(top_logprobs=-3), "top_logprobs", id="top-logprobs-negative"),
    pytest.param(CHAT, _chat(stop=["a"] * 5), "stop", id="five-stops"),
    pytest.param(
        CHAT,
        _chat(tools=[{"type": "shell", "function": {"name": "f"}}]),
        "tools[0].type",
        id="tool-type",
    ),
    pytest.param(
        CHAT,
        _chat(tools=[{"type": "function", "function": {"name": "rm -rf /"}}]),
        "tools[0].function.name",
        id="tool-name",
    ),
    pytest.param(CHAT, _chat(tool_choice="always"), "tool_choice", id="tool-choice"),
    pytest.param(
        CHAT,
        _chat(response_format={"type": "yaml"}),
        "response_format.type",
        id="response-format",
    ),
    pytest.param(
        CHAT, _chat(metadata={f"k{i}": "v" for i in range(17)}), "metadata", id="metadata-count"
    ),
    pytest.param(CHAT, _chat(messages=[]), "messages", id="no-messages"),
    pytest.param(
        CHAT,
        _chat(messages=[{"role": "root", "content": "x"}]),
        "messages[0].role",
        id="role-root",
    ),
    pytest.param(
        CHAT,
        _chat(messages=[{"role": "USER", "content": "x"}]),
        "messages[0].role",
        id="role-uppercase",
    ),
    pytest.param(
        CHAT,
        _chat(messages=[{"role": "user\u0000", "content": "x"}]),
        "messages[0].role",
        id="role-nul",
    ),
    pytest.param(
        CHAT,
        _chat(messages=[{"role": "r" * 100_000, "content": "x"}]),
        "messages[0].role",
        id="role-100k",
    ),
    pytest.param(
        CHAT,
        _chat(messages=[{"role": "user", "content": [{"type": "video", "video": {}}]}]),
        "messages[0].content[0]",
        id="content-part-type",
    ),
    pytest.param(
        CHAT,
        _chat(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}],
                }
            ]
        ),
        "messages[0].content[0]",
        id="image-file-url",
    ),
    pytest.param(CHAT, _chat(model="m" * 100_000), "model", id="model-100k"),
    pytest.param(CHAT, _chat(model=""), "model", id="model-empty"),
    pytest.param(
        COMPLETIONS, {"model": "fast-chat", "prompt": [[[1]]]}, "prompt", id="prompt-deep"
    ),
    pytest.param(COMPLETIONS, {"model": "fast-chat", "prompt": [-1]}, "prompt", id="prompt-neg"),
    pytest.param(
        COMPLETIONS, {"model": "fast-chat", "prompt": ["a", 1]}, "prompt", id="prompt-mix"
    ),
    pytest.param(
        COMPLETIONS,
        {"model": "fast-chat", "prompt": "x", "max_tokens": -5},
        "max_tokens",
        id="completion-max-tokens-negative",
    ),
    pytest.param(
        COMPLETIONS, {"model": "fast-chat", "prompt": "x", "n": 100}, "n", id="completion-n"
    ),
    pytest.param(
        COMPLETIONS,
        {"model": "fast-chat", "prompt": "x", "best_of": 99},
        "best_of",
        id="completion-best-of",
    ),
    pytest.param(EMBEDDINGS, {"model": "embed", "input": [[[[1]]]]}, "input", id="input-deep"),
    pytest.param(EMBEDDINGS, {"model": "embed", "input": [1.5]}, "input", id="input-fraction"),
    pytest.param(EMBEDDINGS, {"model": "embed", "input": [-1]}, "input", id="input-negative"),
    pytest.param(EMBEDDINGS, {"model": "embed", "input": [True]}, "input", id="input-bool"),
    pytest.param(EMBEDDINGS, {"model": "embed", "input": [""]}, "input", id="input-empty"),
    pytest.param(EMBEDDINGS, {"model": "embed", "input": ["x"] * 2049}, "input", id="input-2049"),
    pytest.param(
        EMBEDDINGS,
        {"model": "embed", "input": "x", "dimensions": 2**31 - 1},
        "dimensions",
        id="dimensions-huge",
    ),
    pytest.param(
        EMBEDDINGS,
        {"model": "embed", "input": "x", "dimensions": -1},
        "dimensions",
        id="dimensions-negative",
    ),
]


@pytest.mark.parametrize(("path", "payload", "param"), INVALID_FIELDS)
def test_invalid_fields_are_400_naming_the_field(
    edge: Edge, path: str, payload: dict[str, Any], param: str | None
) -> None:
    """param None: the transcoder refused the type before the router saw it."""
    for stream in (False, True) if path != EMBEDDINGS else (False,):
        body = {**payload, "stream": True} if stream else payload
        reply = edge.post(path, body)
        error = edge.refuse(400, "invalid_request", reply)
        assert error["param"] == param
        # Nothing the client sent is quoted back at length.
        assert len(reply.body) < 2048
    edge.assert_nothing_served()


def test_thousands_of_messages(edge: Edge) -> None:
    for count in (4097, 100_000):
        reply = edge.post(CHAT, _chat(messages=[USER] * count))
        assert edge.refuse(400, "invalid_request", reply)["param"] == "messages"
    edge.assert_nothing_served()
    served = edge.post(CHAT, {"model": "mock-chat", "messages": [USER] * 4096})
    assert served.status == 200
    assert json.loads(served.body)["usage"]["prompt_tokens"] == 4096


def _nested(depth: int, leaf: Any = "x", kind: str = "list") -> Any:
    value = leaf
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


@pytest.mark.parametrize(
    ("depth", "kind"),
    [
        pytest.param(29, "list", id="arrays-29"),
        pytest.param(29, "dict", id="objects-29"),
        pytest.param(30, "list", id="arrays-30"),
        pytest.param(30, "dict", id="objects-30"),
        pytest.param(90, "list", id="arrays-90"),
        pytest.param(90, "dict", id="objects-90"),
        pytest.param(100_000, "list", id="arrays-100000"),
    ],
)
def test_deeply_nested_content_is_400(edge: Edge, depth: int, kind: str) -> None:
    """Past 32 levels the edge refuses the body (the services' protobuf decoder
    would fail at about 33, as an opaque 500); within them, the router refuses
    content that is not OpenAI's shape."""
    if depth > 1000:  # json.dumps recurses: write the body out by hand
        body = b'{"model": "fast-chat", "messages": [{"role": "user", "content": '
        body += b"[" * depth + b"]" * depth + b"}]}"
        total = depth + 3
    else:
        content = _nested(depth, kind=kind) if kind == "list" else [_nested(depth - 1, kind=kind)]
        payload = _chat(messages=[{"role": "user", "content": content}])
        total = _depth(payload)
        body = json.dumps(payload).encode()
    for stream in (False, True):
        sent = body.replace(b'"model"', b'"stream": true, "model"', 1) if stream else body
        reply = edge.send("POST", CHAT, sent)
        error = edge.refuse(400, "invalid_request", reply)
        if total <= 32:
            assert error["param"] == "messages[0].content[0]", error
        else:
            assert "32 levels" in error["message"], error
    edge.assert_nothing_served()


def test_grpc_message_nested_past_the_decoder_limit_is_invalid_argument(stack: Stack) -> None:
    request = router_pb2.CreateChatCompletionRequest()
    request.params.model = "mock-chat"
    # Built in place: copying a message this deep fails in the client already.
    value = request.params.messages.add(role="user").content
    for _ in range(60):
        value = value.list_value.values.add()
    value.string_value = "x"
    with grpc.insecure_channel(stack.router_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateChatCompletion(request, metadata=(("authorization", f"Bearer {FULL_KEY}"),))
        code = cast(grpc.Call, info.value).code()
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_huge_bodies_are_413(edge: Edge) -> None:
    """Past MAX_BODY_BYTES Envoy refuses the body; a body within it whose decoded
    message would not fit the services' gRPC limit is refused by the router,
    also as 413 (not the 500 a failed gRPC send would give)."""
    head = json.dumps({"model": "fast-chat", "messages": [{"role": "user", "content": ""}]})
    pad = MAX_BODY_BYTES - len(head)
    at_limit = (head[:-4] + "x" * pad + head[-4:]).encode()
    assert len(at_limit) == MAX_BODY_BYTES
    over = (head[:-4] + "x" * (pad + 1) + head[-4:]).encode()
    envoy = edge.refuse(413, "request_too_large", edge.send("POST", CHAT, over))
    assert str(MAX_BODY_BYTES) in envoy["message"]
    router = edge.refuse(413, "request_too_large", edge.send("POST", CHAT, at_limit))
    assert "once decoded" in router["message"]
    edge.assert_nothing_served()


# -- fields outside OpenAI's spec ---------------------------------------------------


def test_unknown_fields_are_dropped_never_forwarded(edge: Edge) -> None:
    """The transcoder drops JSON fields the protos do not define, at any level
    of a typed message. That is accepted on purpose: new OpenAI parameters keep
    working through older gateways (as no-ops), and what is dropped can never
    reach an upstream. Free-form JSON (content parts, tool schemas, ...) is
    forwarded as sent, so the keys that could steer an upstream are refused
    there (test_upstream_target_cannot_be_smuggled)."""
    body = _chat(
        messages=[{"role": "user", "content": "hi", "x_unknown_message_field": 1}],
        x_unknown_top_level={"nested": [1, 2]},
        stream_options={"include_usage": True, "x_unknown_option": True},
    )
    reply = edge.post(CHAT, body)
    assert reply.status == 200, reply.body[:300]
    assert edge.upstream.wait_until(lambda: len(edge.upstream.requests) == 1)
    forwarded = json.dumps(edge.upstream.requests[0].json)
    assert "x_unknown" not in forwarded


# -- upstream targets and credentials smuggled in the body ----------------------------


def _smuggled(attacker: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, path, body): each carries the attacker's address or headers somewhere."""
    headers = {"authorization": "Bearer attacker", "x-forward-to": attacker}
    return [
        ("top-base_url", CHAT, _chat(base_url=attacker)),
        ("top-api_base", CHAT, _chat(api_base=attacker)),
        ("top-api_key", CHAT, _chat(api_key="sk-attacker")),
        ("top-extra_headers", CHAT, _chat(extra_headers=headers)),
        ("top-extra_query", CHAT, _chat(extra_query={"redirect": attacker})),
        ("top-extra_body", CHAT, _chat(extra_body={"base_url": attacker})),
        ("camel-baseUrl", CHAT, _chat(baseUrl=attacker)),
        ("upper-API-BASE", CHAT, _chat(**{"API-BASE": attacker})),
        (
            "message",
            CHAT,
            _chat(messages=[{"role": "user", "content": "hi", "api_base": attacker}]),
        ),
        (
            "content-part",
            CHAT,
            _chat(
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "hi", "base_url": attacker}],
                    }
                ]
            ),
        ),
        (
            "image-part",
            CHAT,
            _chat(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "https://x.test/a.png", "api_base": attacker},
                            }
                        ],
                    }
                ]
            ),
        ),
        ("metadata", CHAT, _chat(metadata={"api_key": "sk-attacker"})),
        ("response_format", CHAT, _chat(response_format={"type": "text", "base_url": attacker})),
        (
            "tool-schema",
            CHAT,
            _chat(
                tools=[
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "extra_headers": headers},
                        },
                    }
                ]
            ),
        ),
        ("deep", CHAT, _chat(response_format={"type": "text", "a": _nested(20, {"api_base": 1})})),
        ("stream", CHAT, _chat(stream=True, base_url=attacker)),
        ("completions", COMPLETIONS, {"model": "fast-chat", "prompt": "x", "api_base": attacker}),
        ("embeddings", EMBEDDINGS, {"model": "embed", "input": "x", "base_url": attacker}),
    ]


def _escaped_keys(attacker: str) -> list[tuple[str, bytes]]:
    """Bodies whose keys are JSON-escaped: the same keys to every JSON parser."""
    head = '{"model": "fast-chat", "messages": [{"role": "user", "content": "hi"}], '
    url = json.dumps(attacker)
    part = '{"type": "text", "text": "hi", "extra\\u005fheaders": {"x": ' + url + "}}"
    bodies = {
        "u005f": head + '"base\\u005furl": ' + url + "}",
        "u005F": head + '"api\\u005Fbase": ' + url + "}",
        "all-escaped": head + '"\\u0061\\u0070\\u0069\\u005f\\u006b\\u0065\\u0079": "sk-x"}',
        "in-part": '{"model": "fast-chat", "messages": [{"role": "user", "content": ['
        + part
        + "]}]}",
        "spaced": head + '"base_url"  \n\t : ' + url + "}",
    }
    return [(name, body.encode()) for name, body in bodies.items()]


def test_upstream_target_cannot_be_smuggled(edge: Edge, attacker: TcpCanary) -> None:
    """The LiteLLM CVE-2024-6587 class: a client-supplied upstream address or
    credentials. Refused wherever it appears, however it is spelled, whatever the
    content-type says; nothing connects anywhere."""
    cases: list[tuple[str, str, bytes]] = [
        (name, path, json.dumps(body).encode()) for name, path, body in _smuggled(attacker.url)
    ]
    cases += [(name, CHAT, body) for name, body in _escaped_keys(attacker.url)]
    for name, path, body in cases:
        for content_type in ("application/json", "text/plain", None):
            # None: http.client would send no content-type; curl -d sends this one.
            headers = {"content-type": content_type or "application/x-www-form-urlencoded"}
            reply = edge.send("POST", path, body, headers)
            assert reply.status == 400, (name, content_type, reply.body[:300])
            assert edge.refuse(400, "forbidden_parameter", reply)["param"] in {
                "base_url", "api_base", "api_key", "extra_headers", "extra_query", "extra_body",
            }, name  # fmt: skip
    edge.assert_nothing_served()


def test_forbidden_words_in_text_are_not_keys(edge: Edge) -> None:
    """Only an object key matches: the same words inside strings pass."""
    text = 'configure "base_url": and "api_key" : here \\"extra_headers\\":'
    reply = edge.post(CHAT, {"model": "mock-chat", "messages": [{"role": "user", "content": text}]})
    assert reply.status == 200, reply.body[:300]
    assert "base_url" in json.loads(reply.body)["choices"][0]["message"]["content"]


def test_query_parameters_are_refused(edge: Edge, attacker: TcpCanary) -> None:
    for path in (f"{CHAT}?base_url={attacker.url}", f"{CHAT}?api_key=x", "/v1/models?x=1"):
        method, body = ("GET", None) if path.startswith("/v1/models") else ("POST", b"{}")
        reply = edge.send(method, path, body)
        assert edge.refuse(400, "invalid_request", reply)
    edge.assert_nothing_served()


def test_grpc_framed_requests_are_415(edge: Edge) -> None:
    reply = edge.send("POST", CHAT, b"\x00\x00\x00\x00\x00", {"content-type": "application/grpc"})
    edge.refuse(415, "unsupported_media_type", reply)
    edge.assert_nothing_served()


# -- Authorization headers ----------------------------------------------------------

AUTH_HEADERS = [
    pytest.param({}, 401, "missing_api_key", id="none"),
    pytest.param({"authorization": "Bearer"}, 401, "missing_api_key", id="bearer-only"),
    pytest.param({"authorization": "Basic dXNlcjpwYXNz"}, 401, "missing_api_key", id="basic"),
    pytest.param({"authorization": "Bearer ' OR '1'='1"}, 401, "invalid_api_key", id="sql-or"),
    pytest.param(
        {"authorization": "Bearer x'; DROP TABLE api_keys; --"},
        401,
        "invalid_api_key",
        id="sql-drop",
    ),
    pytest.param(
        {"x-api-key": "' UNION SELECT key_sha256 FROM api_keys --"},
        401,
        "invalid_api_key",
        id="sql-union-x-api-key",
    ),
    pytest.param(
        {"authorization": f"Bearer {FULL_KEY}' OR 1=1 --"},
        401,
        "invalid_api_key",
        id="sql-after-valid-key",
    ),
    pytest.param({"authorization": f"Bearer {FULL_KEY}%"}, 401, "invalid_api_key", id="key-plus"),
    pytest.param({"authorization": f"Bearer {FULL_KEY[:-1]}"}, 401, "invalid_api_key", id="prefix"),
    pytest.param(
        {"authorization": f"Bearer {FULL_KEY.upper()}"}, 401, "invalid_api_key", id="upper"
    ),
    pytest.param({"authorization": "Bearer " + "A" * 1000}, 401, "invalid_api_key", id="1kb"),
    pytest.param({"authorization": "Bearer " + "A" * 2048}, 401, "invalid_api_key", id="2kb"),
    pytest.param(
        {"authorization": "Bearer " + "A" * 8192},
        431,
        "request_header_fields_too_large",
        id="8kb",
    ),
    pytest.param(
        {"authorization": "Bearer " + "A" * 65536},
        431,
        "request_header_fields_too_large",
        id="64kb",
    ),
    pytest.param(
        {"x-api-key": "A" * 65536}, 431, "request_header_fields_too_large", id="64kb-x-api-key"
    ),
    pytest.param(
        {"x-filler": "A" * 12_000}, 431, "request_header_fields_too_large", id="12kb-other-header"
    ),
    pytest.param(
        {"authorization": b"Bearer sk-\xff\xfe\x80abc"}, 401, "invalid_api_key", id="non-utf8"
    ),
    pytest.param(
        {"authorization": b"Bearer " + FULL_KEY.encode() + b"\xff"},
        401,
        "invalid_api_key",
        id="valid-key-then-non-utf8",
    ),
    pytest.param({"x-api-key": b"\xc3\x28"}, 401, "invalid_api_key", id="non-utf8-x-api-key"),
    pytest.param(
        {"authorization": "Bearer cl\u00e9".encode("latin-1")},
        401,
        "invalid_api_key",
        id="latin1",
    ),
    pytest.param(
        {"authorization": "Bearer cl\u00e9".encode()}, 401, "invalid_api_key", id="utf8-non-ascii"
    ),
    pytest.param(
        {"authorization": b"Bearer a\x01b\x7f"}, 400, "invalid_request", id="control-bytes"
    ),
]


@pytest.mark.parametrize(("headers", "status", "code"), AUTH_HEADERS)
def test_hostile_authorization_headers(
    edge: Edge, headers: dict[str, str | bytes], status: int, code: str
) -> None:
    """Never served, never a 5xx. Oversized headers are Envoy's (431): the edge
    holds request headers to what the services accept as gRPC metadata. Control
    characters are refused by Envoy's HTTP/1 parser (400)."""
    for path, body in (
        (CHAT, json.dumps({"model": "mock-chat", "messages": [USER]}).encode()),
        ("/v1/models", None),
        ("/v1/admin/models", None),
    ):
        reply = edge.send("POST" if body else "GET", path, body, headers, key=None)
        edge.refuse(status, code, reply)
    edge.assert_nothing_served()
    for component in ("router", "registry", "envoy"):
        log = edge.stack.log(component)
        assert FULL_KEY not in log, component


def test_two_authorization_headers_are_not_a_key(edge: Edge) -> None:
    """Envoy joins repeated headers with a comma: never a valid key."""
    body = json.dumps({"model": "mock-chat", "messages": [USER]}).encode()
    for first, second in ((FULL_KEY, "wrong"), ("wrong", FULL_KEY), (FULL_KEY, FULL_KEY)):
        headers: list[tuple[str, str | bytes]] = [
            ("authorization", f"Bearer {first}"),
            ("authorization", f"Bearer {second}"),
        ]
        edge.refuse(401, "invalid_api_key", edge.send("POST", CHAT, body, headers, key=None))
    edge.assert_nothing_served()


def test_admin_api_requires_the_admin_key(edge: Edge) -> None:
    for key in (None, FULL_KEY, ADMIN_KEY[:-1], ADMIN_KEY + "x", ADMIN_KEY.upper(), "' OR 1=1"):
        reply = edge.send("GET", "/v1/admin/models", key=key)
        assert reply.status == 401, (key, reply.body[:200])
        assert reply.error()["type"] == "authentication_error"
    assert edge.send("GET", "/v1/admin/models", key=ADMIN_KEY).status == 200
    # The admin key may call what a client key may (ACCESS_CLIENT, access.proto);
    # a client key is no admin key (above).
    chat = edge.post(CHAT, {"model": "mock-chat", "messages": [USER]}, key=ADMIN_KEY)
    assert chat.status == 200, chat.body[:300]
    edge.assert_nothing_served()


# -- the model allow-list -----------------------------------------------------------

BYPASSES = [
    pytest.param("SECRET-CHAT", 404, id="case"),
    pytest.param("Secret-Chat", 404, id="title-case"),
    pytest.param(" secret-chat", 404, id="leading-space"),
    pytest.param("secret-chat ", 404, id="trailing-space"),
    pytest.param("secret-chat\n", 404, id="trailing-newline"),
    pytest.param("secret-chat\t", 404, id="trailing-tab"),
    pytest.param("secret-chat\u0000", 404, id="trailing-nul"),
    pytest.param("secret-chat\u200b", 404, id="zero-width-space"),
    pytest.param("secret\u2010chat", 404, id="unicode-hyphen"),
    pytest.param("\uff53ecret-chat", 404, id="fullwidth"),
    pytest.param("secret-cha", 404, id="prefix"),
    pytest.param("secret-chat-x", 404, id="suffix"),
    pytest.param("secret-chat/../mock-chat", 404, id="path"),
    pytest.param("secret*", 404, id="glob"),
    pytest.param("secret-chat,mock-chat", 404, id="list"),
    pytest.param("secret", 403, id="alias-of-disallowed"),
    pytest.param("secret-chat", 403, id="disallowed"),
    pytest.param("SECRET", 404, id="alias-case"),
    pytest.param("MOCK-CHAT", 404, id="allowed-case"),
    pytest.param(" mock-chat", 404, id="allowed-leading-space"),
    pytest.param("mock-chat ", 404, id="allowed-trailing-space"),
    pytest.param("mock-chat\u0000", 404, id="allowed-trailing-nul"),
    pytest.param("mock", 404, id="allowed-prefix"),
    pytest.param("mock-chat-x", 404, id="allowed-suffix"),
]


@pytest.mark.parametrize(("model", "status"), BYPASSES)
def test_model_allow_list_bypasses_fail(edge: Edge, model: str, status: int) -> None:
    code = "model_not_allowed" if status == 403 else "model_not_found"
    for stream in (False, True):
        body = {"model": model, "messages": [USER], "stream": stream}
        edge.refuse(status, code, edge.post(CHAT, body, key=LIMITED_KEY))
    edge.refuse(
        status, code, edge.post(COMPLETIONS, {"model": model, "prompt": "x"}, key=LIMITED_KEY)
    )
    path = "/v1/models/" + quote(model, safe="")
    edge.refuse(status, code, edge.send("GET", path, key=LIMITED_KEY))
    edge.assert_nothing_served()


def test_allowed_model_and_its_alias_are_served(edge: Edge) -> None:
    """The positive control: the same key is served what it may use."""
    for model in ("mock-chat", "mc"):
        reply = edge.post(CHAT, {"model": model, "messages": [USER]}, key=LIMITED_KEY)
        assert reply.status == 200, reply.body[:300]
        assert reply.headers["x-switchboard-model"] == "mock-chat"
    listed = json.loads(edge.send("GET", "/v1/models", key=LIMITED_KEY).body)
    assert "secret-chat" not in {m["id"] for m in listed["data"]}


def test_client_keys_are_stored_as_hashes(stack: Stack) -> None:
    """The registry keeps SHA-256 digests; the plaintext is in no file it writes."""
    files = [p for p in (stack.home / "registry").rglob("*") if p.is_file()]
    assert files
    stored = b"".join(p.read_bytes() for p in files)
    for key in (FULL_KEY, LIMITED_KEY):
        assert key.encode() not in stored
        assert hashlib.sha256(key.encode()).hexdigest().encode() in stored


# -- property-based: random bodies at the edge -----------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
SERVED_MODELS = ["mock-chat", "mc", "mock-embed"]
MODELS = st.sampled_from([*SERVED_MODELS, "MOCK-CHAT", ""]) | st.text(max_size=12).filter(
    lambda m: m not in LOOPBACK_MODELS
)
CHAT_FIELDS = [
    "model", "messages", "temperature", "top_p", "n", "stream", "stop", "max_tokens",
    "max_completion_tokens", "presence_penalty", "frequency_penalty", "logit_bias", "user",
    "seed", "tools", "tool_choice", "response_format", "logprobs", "top_logprobs", "metadata",
    "stream_options",
]  # fmt: skip
OTHER_FIELDS = ["prompt", "input", "dimensions", "encoding_format", "best_of", "echo", "suffix"]


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid body for one endpoint, then a few fields set to random JSON or removed."""
    path = draw(st.sampled_from([CHAT, COMPLETIONS, EMBEDDINGS]))
    # Mostly a model the endpoint serves (so that valid bodies get through).
    served = ["mock-embed"] if path == EMBEDDINGS else ["mock-chat", "mc"]
    model = draw(st.sampled_from(served)) if draw(st.integers(0, 3)) else draw(MODELS)
    body: dict[str, Any]
    if path == CHAT:
        body = {"model": model, "messages": [{"role": "user", "content": draw(st.text())}]}
    elif path == COMPLETIONS:
        body = {"model": model, "prompt": draw(st.text(min_size=1))}
    else:
        body = {"model": model, "input": draw(st.text(min_size=1))}
    if draw(st.booleans()) and path != EMBEDDINGS:
        body["stream"] = True
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        name = draw(st.sampled_from(CHAT_FIELDS + OTHER_FIELDS + ["role", "x_unknown"]))
        if draw(st.integers(0, 4)) == 0:
            body.pop(name, None)
        elif name == "role" and path == CHAT:
            body["messages"][0]["role"] = draw(JSON_VALUES)
        else:
            body[name] = draw(JSON_VALUES)
    return path, body


# Two parts near-valid bodies, one part anything.
BODIES = (
    near_valid()
    | near_valid()
    | st.tuples(
        st.sampled_from([CHAT, COMPLETIONS, EMBEDDINGS]),
        JSON_VALUES | st.binary(max_size=64),
    )
)
ALLOWED = {200, 400, 401, 403, 404, 413, 429}
_VALIDATORS: dict[str, tuple[Callable[[Any], None], type[Any]]] = {
    CHAT: (validate_chat, openai_pb2.ChatCompletionParams),
    COMPLETIONS: (validate_completion, openai_pb2.CompletionParams),
    EMBEDDINGS: (validate_embedding, openai_pb2.EmbeddingParams),
}


_BOOL_WORDS = {"true": True, "t": True, "yes": True, "y": True, "1": True}
_BOOL_WORDS |= {"false": False, "f": False, "no": False, "n": False, "0": False}


def _as_transcoded(body: dict[str, Any], kind: Any) -> dict[str, Any]:
    """The transcoder reads a quoted boolean ("yes", "1", "t") as a boolean, as
    absl's SimpleAtob does: apply that to the top-level fields, which the edge
    does not check (it checks "stream" itself)."""
    out = dict(body)
    for name, value in body.items():
        field = kind.DESCRIPTOR.fields_by_name.get(name)
        if (
            field is not None
            and field.type == field.TYPE_BOOL
            and isinstance(value, str)
            and value.lower() in _BOOL_WORDS
        ):
            out[name] = _BOOL_WORDS[value.lower()]
    return out


def _valid(path: str, body: Any) -> bool:
    """The router's own verdict on the body (what a 200 must agree with)."""
    validate, kind = _VALIDATORS[path]
    try:
        params = json_format.ParseDict(
            _as_transcoded(body, kind), kind(), ignore_unknown_fields=True
        )
        validate(params)
    except (json_format.ParseError, SwitchboardError, TypeError, ValueError, AttributeError):
        return False
    return True


def test_fuzz_bodies_at_the_edge(edge: Edge) -> None:
    """Random JSON, random bytes, and valid bodies with fields mutated, to the
    three generation endpoints with a good, a limited or a wrong key: only the
    statuses OpenAI documents, never a 5xx, an OpenAI error body for every
    refusal, and a 200 only for a body the router's validation accepts."""

    @settings(max_examples=150, deadline=None, derandomize=True, database=None)
    @given(case=BODIES, key=st.sampled_from([FULL_KEY, LIMITED_KEY, "sk-wrong"]))
    def one(case: tuple[str, Any], key: str) -> None:
        path, body = case
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        reply = edge.send("POST", path, raw, key=key)
        assert reply.status in ALLOWED, (reply.status, reply.body[:300])
        if reply.status != 200:
            reply.error()
            return
        assert key != "sk-wrong"
        assert isinstance(body, dict)
        assert _valid(path, body), body
        assert body.get("model") in SERVED_MODELS
        if body.get("stream") is True and path != EMBEDDINGS:
            assert reply.headers["content-type"].startswith("text/event-stream")
            assert reply.body.endswith(b"data: [DONE]\n\n")
        else:
            assert json.loads(reply.body)["object"] in {
                "chat.completion",
                "text_completion",
                "list",
            }

    one()
    assert edge.send("GET", "/healthz", key=None).status == 200
    edge.assert_nothing_served()
