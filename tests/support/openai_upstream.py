"""A loopback HTTP server that speaks OpenAI's wire format, for use as a fake upstream.

Integration, e2e and benchmark code points a provider at :attr:`OpenAIUpstream.base_url`
and gets replies whose bytes look like api.openai.com's: the same JSON objects, the same
``data: <json>\\n\\n`` server-sent-event framing terminated by ``data: [DONE]\\n\\n``, the
same error envelope ``{"error": {"message", "type", "param", "code"}}`` and an
``x-request-id`` header on every response. Tests can script it to fail through
:attr:`OpenAIUpstream.behaviour` (error statuses, hangs, mid-stream connection resets,
slow first bytes) and read back what it saw (:attr:`OpenAIUpstream.requests`) and what it
reported (:attr:`OpenAIUpstream.served`), which is the ground truth for usage accounting.

Deterministic content
---------------------
Chat replies are ``"echo:"`` followed by the words of the last user message, single-space
separated; for ordinary single-spaced text that is exactly ``"echo: " + text`` (array
content is its text parts joined by a space). Legacy completions echo the (first) prompt
the same way.

Tokenisation rule (what ``usage`` reports): a token is one whitespace-separated word.

* ``completion_tokens`` = number of words in the reply (after ``max_tokens`` /
  ``max_completion_tokens`` truncation, which sets ``finish_reason="length"``), times ``n``.
* ``prompt_tokens`` = number of words across the text of *all* messages (or of the prompt,
  or of every embedding input; a token-array input counts one token per integer), but at
  least 1.

Streaming sends one content chunk per reply token; each chunk carries the word plus a
trailing space except the last, so concatenating the deltas gives the full content.

The Responses API (``POST /v1/responses``) is served too, in its own wire format (typed
output items led by a ``reasoning`` item, ``event:``/``data:`` stream framing without
``[DONE]``), with the same content and usage rules; see :mod:`tests.support.openai_responses`.

Embeddings are ``dimensions`` (default 8) floats derived from a SHA-256 of the input. Each is
a multiple of 1/128 in [-1, 1), so the float32 ``base64`` encoding round-trips exactly and
the two encodings compare equal.

Run standalone with ``python -m tests.support.openai_upstream --port 0``; it prints
``LISTENING http://HOST:PORT/v1`` and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import signal
import struct
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from aiohttp import web

__all__ = [
    "Behaviour",
    "OpenAIUpstream",
    "RecordedRequest",
    "Scripted",
    "ServedCall",
    "run_in_thread",
]

Mode = Literal["ok", "status", "hang", "reset_after", "slow"]

MODEL_ID = "loopback-model"
SYSTEM_FINGERPRINT = "fp_loopback"
DEFAULT_EMBEDDING_DIMENSIONS = 8
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"

# Bounds every wait this module does on behalf of a caller, so a broken server fails a
# test instead of wedging it.
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0
_SHUTDOWN_TIMEOUT_S = 0.5
# Open-connection counts change inside aiohttp without telling us, so waiters also
# re-check on this period rather than relying on notifications alone.
_WAIT_RECHECK_S = 0.05


@dataclass
class Behaviour:
    """What the next requests do. Tests mutate or replace ``upstream.behaviour``.

    Each request snapshots the behaviour when it arrives, so changing it mid-request
    affects only later requests.
    """

    mode: Mode = "ok"
    status: int = 500
    retry_after: float | None = None
    reset_after_chunks: int = 2
    chunk_delay_s: float = 0.0
    first_byte_delay_s: float = 0.0
    # Chat replies with this text (split on spaces into tokens) instead of the echo.
    reply: str | None = None
    # Chat answers a stream request with one JSON body, as servers that cannot stream do.
    stream_as_json: bool = False
    # reset_after drops the connection only once this is set (or after HELD_S): a
    # test sets it when its client has seen what was sent. A connection lost while
    # the provider's HTTP client still buffers unread data loses that data too
    # (aiohttp raises the loss before handing out what it holds).
    reset_when: threading.Event | None = None


HELD_S = 10.0


async def held(reset_when: threading.Event | None) -> None:
    """Until `reset_when` is set, if there is one, or HELD_S: a fake's
    reset_after drops its connection then (see Behaviour.reset_when)."""
    if reset_when is not None:
        await asyncio.to_thread(reset_when.wait, HELD_S)


@dataclass
class Scripted:
    """One scripted chat reply (n=1): text, then tool calls (finish_reason
    "tool_calls" when there are any), with cached and reasoning tokens reported
    in their usage fields."""

    text: str = ""
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    cached_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass
class RecordedRequest:
    """One request as received. Header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any | None
    body: bytes = b""
    # time.monotonic() on arrival, to check the spacing of retries.
    received_at: float = field(default_factory=time.monotonic)


@dataclass
class ServedCall:
    """One generation whose response was started (chat, completions, embeddings or responses).

    Error answers (scripted statuses, 4xx validation, 401) and requests that hang or are
    reset before any response do not appear here.

    ``prompt_tokens``/``completion_tokens`` are what the upstream computed for the call;
    ``usage_reported`` says whether a usage object actually went out on the wire (a
    non-stream body, or the final chunk of a stream with ``include_usage``).
    ``chunks_sent`` counts content chunks (one per token per choice); 0 when not streaming.
    """

    id: str
    endpoint: Literal["chat.completions", "completions", "embeddings", "responses"]
    model: str
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    chunks_sent: int = 0
    completed: bool = False
    usage_reported: bool = False


class _ApiError(Exception):
    """Raised inside handlers to answer with OpenAI's error envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type_ = type_
        self.param = param
        self.code = code
        self.headers = headers or {}


@dataclass
class _Ctx:
    """Per-request state shared between the wrapper and the endpoint handler."""

    behaviour: Behaviour
    # Set when this server tore the connection down on purpose, so the resulting
    # cancellation is not mistaken for the client going away.
    aborted_by_us: bool = False
    disconnect_counted: bool = False


_Handler = Callable[[web.Request, _Ctx], Awaitable[web.StreamResponse]]

# Mirrors the type/code/message OpenAI uses for each status, so SDK error mapping and
# any gateway that inspects the body see realistic values.
_STATUS_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request (scripted by the loopback upstream)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    409: ("invalid_request_error", None, "Conflict."),
    422: ("invalid_request_error", None, "Unprocessable entity."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests (scripted by the loopback upstream).",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    504: ("server_error", None, "Gateway timeout."),
}


def _words(text: str) -> list[str]:
    return text.split()


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return " ".join(parts)
    return ""


def _reply_words(prompt_text: str) -> list[str]:
    return ["echo:", *_words(prompt_text)]


def _pieces(words: list[str]) -> list[str]:
    """Per-token stream deltas whose concatenation equals ``" ".join(words)``."""
    return [w + " " if i < len(words) - 1 else w for i, w in enumerate(words)]


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _sse(obj: Any) -> bytes:
    return b"data: " + _compact(obj) + b"\n\n"


_SSE_DONE = b"data: [DONE]\n\n"


def _format_retry_after(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _embedding(key: bytes, dimensions: int) -> list[float]:
    stream = bytearray()
    counter = 0
    while len(stream) < dimensions:
        stream += hashlib.sha256(counter.to_bytes(4, "little") + key).digest()
        counter += 1
    return [(b - 128) / 128.0 for b in stream[:dimensions]]


def _int_param(body: dict[str, Any], name: str, *, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _ApiError(
            400,
            f"Invalid value for '{name}': expected an integer >= {minimum}.",
            param=name,
            code="invalid_value",
        )
    return value


def _require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _ApiError(400, "you must provide a model parameter")
    return model


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


class OpenAIUpstream:
    """The fake upstream. ``await start()`` / ``await stop()`` inside an event loop, or use
    :func:`run_in_thread` from synchronous code.

    ``record_requests=False`` keeps :attr:`requests` empty, for long benchmark runs.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        *,
        record_requests: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key
        self.record_requests = record_requests
        self.behaviour = Behaviour()
        self.base_url = ""
        self.requests: list[RecordedRequest] = []
        self.served: list[ServedCall] = []
        self._scripted: list[Scripted] = []
        self.disconnects = 0
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handler_tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._cond = threading.Condition()
        self._change = asyncio.Event()

    # -- observation --------------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        """TCP connections aiohttp currently holds (including idle keep-alive ones)."""
        runner = self._runner
        if runner is None or runner.server is None:
            return 0
        return len(runner.server.connections)

    @property
    def in_flight(self) -> int:
        """Requests whose handler is still running."""
        return len(self._handler_tasks)

    def reset(self) -> None:
        """Forget recorded history and go back to the default behaviour."""
        self.behaviour = Behaviour()
        self.requests.clear()
        self.served.clear()
        self._scripted.clear()
        self.disconnects = 0

    def script(self, *replies: Scripted) -> None:
        """The next chat requests' replies, in order; the echo reply once they run out."""
        self._scripted.extend(replies)

    def wait_until(self, predicate: Callable[[], bool], within_s: float = 5.0) -> bool:
        """Block (from any thread but the server's) until ``predicate()`` holds.

        Returns False on timeout rather than raising, so callers can assert with context.
        """
        deadline = time.monotonic() + within_s
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, _WAIT_RECHECK_S))
        return True

    async def wait_for(self, predicate: Callable[[], bool], within_s: float = 5.0) -> bool:
        """Async twin of :meth:`wait_until`; usable from the server's loop or another one."""
        if asyncio.get_running_loop() is not self._loop:
            return await asyncio.to_thread(self.wait_until, predicate, within_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._change.wait(), min(remaining, _WAIT_RECHECK_S))
        return True

    def _changed(self) -> None:
        with self._cond:
            self._cond.notify_all()
        # A fresh Event per change lets every current waiter wake exactly once.
        previous, self._change = self._change, asyncio.Event()
        previous.set()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("OpenAIUpstream already started")
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._change = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._wrap(self._chat))
        app.router.add_post("/v1/completions", self._wrap(self._completions))
        app.router.add_post("/v1/embeddings", self._wrap(self._embeddings))
        app.router.add_post("/v1/responses", self._wrap(self._responses))
        app.router.add_get("/v1/models", self._wrap(self._models))
        app.router.add_get("/v1/models/{model}", self._wrap(self._model))
        app.router.add_route("*", "/{tail:.*}", self._wrap(self._not_found))
        app.on_response_prepare.append(self._add_openai_headers)
        runner = web.AppRunner(
            app,
            # Without this a client hanging up never reaches the handler, so hangs would
            # outlive their client and disconnects could not be counted.
            handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
            access_log=None,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self.port = int(bound_port)
        url_host = f"[{bound_host}]" if ":" in str(bound_host) else str(bound_host)
        self.base_url = f"http://{url_host}:{self.port}/v1"

    async def stop(self) -> None:
        runner = self._runner
        if runner is None:
            return
        self._stopping = True
        # aiohttp would wait shutdown_timeout for each hanging handler before cancelling
        # it; cancelling first keeps stop() fast and deterministic.
        pending = [t for t in self._handler_tasks if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=_STOP_TIMEOUT_S)
        await runner.cleanup()
        self._runner = None
        self._changed()

    async def __aenter__(self) -> OpenAIUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- plumbing -----------------------------------------------------------------------

    async def _add_openai_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.setdefault("x-request-id", f"req_{uuid.uuid4().hex}")
        response.headers.setdefault("openai-version", "2020-10-01")
        response.headers.setdefault("openai-processing-ms", "1")

    def _note_disconnect(self, ctx: _Ctx) -> None:
        if ctx.aborted_by_us or ctx.disconnect_counted or self._stopping:
            return
        ctx.disconnect_counted = True
        self.disconnects += 1
        self._changed()

    def _wrap(self, handler: _Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            task = asyncio.current_task()
            assert task is not None
            self._handler_tasks.add(task)
            ctx = _Ctx(behaviour=dataclasses.replace(self.behaviour))
            try:
                body = await request.read()
                if self.record_requests:
                    self.requests.append(
                        RecordedRequest(
                            method=request.method,
                            path=request.path,
                            headers={k.lower(): v for k, v in request.headers.items()},
                            json=_try_json(body),
                            body=body,
                        )
                    )
                    self._changed()
                try:
                    self._check_auth(request)
                    return await handler(request, ctx)
                except _ApiError as err:
                    return await self._send_error(request, ctx, err)
            except asyncio.CancelledError:
                self._note_disconnect(ctx)
                raise
            finally:
                self._handler_tasks.discard(task)
                self._changed()

        return wrapped

    def _check_auth(self, request: web.Request) -> None:
        if self.api_key is None:
            return
        if request.headers.get("Authorization") == f"Bearer {self.api_key}":
            return
        raise _ApiError(
            401,
            "Incorrect API key provided. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )

    async def _send(self, request: web.Request, ctx: _Ctx, resp: web.StreamResponse) -> bool:
        """Write a whole response now; False if the client was gone.

        Writing here rather than returning the response to aiohttp lets us know whether
        it reached the socket, which is what ``completed`` and ``disconnects`` report.
        """
        try:
            await resp.prepare(request)
            await resp.write_eof()
        except ConnectionError:
            self._note_disconnect(ctx)
            return False
        return True

    async def _send_json(
        self,
        request: web.Request,
        ctx: _Ctx,
        obj: Any,
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> tuple[web.StreamResponse, bool]:
        # api.openai.com pretty-prints non-streaming bodies with two-space indentation.
        resp = web.Response(
            status=status,
            body=json.dumps(obj, indent=2, ensure_ascii=False).encode(),
            content_type="application/json",
            headers=headers,
        )
        return resp, await self._send(request, ctx, resp)

    async def _send_error(
        self, request: web.Request, ctx: _Ctx, err: _ApiError
    ) -> web.StreamResponse:
        body = {
            "error": {
                "message": err.message,
                "type": err.type_,
                "param": err.param,
                "code": err.code,
            }
        }
        resp, _ = await self._send_json(request, ctx, body, status=err.status, headers=err.headers)
        return resp

    async def _parse_body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise _ApiError(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                "payload, but what was sent was not valid JSON.)",
            ) from None
        if not isinstance(body, dict):
            raise _ApiError(400, "The request body must be a JSON object.")
        return body

    async def _before_response(self, ctx: _Ctx) -> None:
        """Apply the scripted behaviour that acts before any response bytes."""
        behaviour = ctx.behaviour
        if behaviour.mode == "status":
            type_, code, message = _STATUS_ERRORS.get(
                behaviour.status,
                (
                    "server_error" if behaviour.status >= 500 else "invalid_request_error",
                    None,
                    f"Scripted status {behaviour.status}.",
                ),
            )
            headers = {}
            if behaviour.retry_after is not None:
                headers["Retry-After"] = _format_retry_after(behaviour.retry_after)
            raise _ApiError(behaviour.status, message, type_=type_, code=code, headers=headers)
        if behaviour.mode == "hang":
            # Never resolves: ends only by cancellation (client gone or stop()).
            await asyncio.get_running_loop().create_future()
        if behaviour.mode == "slow" and behaviour.first_byte_delay_s > 0:
            await asyncio.sleep(behaviour.first_byte_delay_s)

    def _abort(self, request: web.Request, ctx: _Ctx) -> None:
        ctx.aborted_by_us = True
        transport = request.transport
        if transport is not None:
            transport.abort()

    def _reset_before_response(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse | None:
        if ctx.behaviour.mode != "reset_after":
            return None
        self._abort(request, ctx)
        # aiohttp's attempt to send this fails with ConnectionError, which it treats as a
        # quiet premature disconnect rather than a handler error.
        return web.Response(status=500)

    # -- streaming ----------------------------------------------------------------------

    async def _stream(
        self,
        request: web.Request,
        ctx: _Ctx,
        call: ServedCall,
        *,
        head: list[dict[str, Any]],
        content: list[list[dict[str, Any]]],
        tail: list[dict[str, Any]],
        usage_chunk: dict[str, Any] | None,
    ) -> web.StreamResponse:
        """Send ``head`` events, then each group of ``content`` events (one group per
        token, one event per choice), then ``tail`` and the optional usage chunk."""
        behaviour = ctx.behaviour
        resp = web.StreamResponse(status=200, headers={"Content-Type": SSE_CONTENT_TYPE})
        first = True

        async def emit(payload: bytes) -> None:
            nonlocal first
            if not first and behaviour.chunk_delay_s > 0:
                await asyncio.sleep(behaviour.chunk_delay_s)
            first = False
            await resp.write(payload)

        self.served.append(call)
        self._changed()
        try:
            await resp.prepare(request)
            for event in head:
                await emit(_sse(event))
            for group in content:
                for event in group:
                    if (
                        behaviour.mode == "reset_after"
                        and call.chunks_sent >= behaviour.reset_after_chunks
                    ):
                        await held(behaviour.reset_when)
                        self._abort(request, ctx)
                        return resp
                    await emit(_sse(event))
                    call.chunks_sent += 1
            if behaviour.mode == "reset_after":
                await held(behaviour.reset_when)
                self._abort(request, ctx)
                return resp
            for event in tail:
                await emit(_sse(event))
            if usage_chunk is not None:
                await emit(_sse(usage_chunk))
                call.usage_reported = True
            await emit(_SSE_DONE)
            await resp.write_eof()
        except ConnectionError:
            self._note_disconnect(ctx)
            return resp
        call.completed = True
        self._changed()
        return resp

    # -- endpoints ----------------------------------------------------------------------

    async def _chat(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        body = await self._parse_body(request)
        model = _require_model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _ApiError(
                400,
                "Missing required parameter: 'messages'.",
                param="messages",
                code="missing_required_parameter",
            )
        n = _int_param(body, "n", minimum=1) or 1
        limit = _int_param(body, "max_completion_tokens", minimum=0)
        if limit is None:
            limit = _int_param(body, "max_tokens", minimum=0)
        stream = body.get("stream") is True and not ctx.behaviour.stream_as_json

        prompt_tokens = 0
        last_user = ""
        for message in messages:
            if not isinstance(message, dict):
                raise _ApiError(
                    400,
                    "Invalid type for 'messages': expected objects.",
                    param="messages",
                    code="invalid_type",
                )
            text = _message_text(message.get("content"))
            prompt_tokens += len(_words(text))
            if message.get("role") == "user":
                last_user = text
        prompt_tokens = max(prompt_tokens, 1)
        scripted = self._scripted.pop(0) if self._scripted else None
        if scripted is not None:
            words = scripted.text.split(" ") if scripted.text else []
        else:
            words = (
                ctx.behaviour.reply.split(" ") if ctx.behaviour.reply else _reply_words(last_user)
            )
        finish_reason = "stop"
        if limit is not None and len(words) > limit:
            words, finish_reason = words[:limit], "length"
        content = " ".join(words)
        calls: list[dict[str, Any]] = [
            {
                "id": f"call_{uuid.uuid4().hex[:12]}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
            for name, arguments in (scripted.tool_calls if scripted else [])
        ]
        if calls:
            finish_reason = "tool_calls"
        # A tool call counts one token per argument character pair, plus one.
        call_tokens = sum(len(c["function"]["arguments"]) // 2 + 1 for c in calls)
        reasoning = scripted.reasoning_tokens if scripted else 0
        completion_tokens = (len(words) + call_tokens) * n + reasoning
        prompt_tokens += scripted.cached_tokens if scripted else 0
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": scripted.cached_tokens if scripted else 0},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        }

        await self._before_response(ctx)
        if not stream and (reset := self._reset_before_response(request, ctx)) is not None:
            return reset

        call = ServedCall(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            endpoint="chat.completions",
            model=model,
            stream=stream,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        created = int(time.time())
        answer: dict[str, Any] = {
            "role": "assistant",
            "content": content if words or not calls else None,
            "refusal": None,
        }
        if calls:
            answer["tool_calls"] = calls
        if not stream:
            obj = {
                "id": call.id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": i,
                        "message": answer,
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                    for i in range(n)
                ],
                "usage": usage,
                "system_fingerprint": SYSTEM_FINGERPRINT,
            }
            return await self._finish_plain(request, ctx, call, obj)

        include_usage = _include_usage(body)

        def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
            obj: dict[str, Any] = {
                "id": call.id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": choices,
            }
            if include_usage:
                obj["usage"] = None
            return obj

        def choice(i: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}

        usage_chunk = None
        if include_usage:
            usage_chunk = chunk([])
            usage_chunk["usage"] = usage
        return await self._stream(
            request,
            ctx,
            call,
            head=[chunk([choice(i, {"role": "assistant", "content": ""})]) for i in range(n)],
            content=[
                [chunk([choice(i, {"content": piece})]) for i in range(n)]
                for piece in _pieces(words)
            ]
            + [
                # Each call as OpenAI streams it: id and name first, then arguments.
                group
                for j, c in enumerate(calls)
                for group in (
                    [
                        chunk(
                            [
                                choice(
                                    0,
                                    {
                                        "tool_calls": [
                                            {
                                                **c,
                                                "index": j,
                                                "function": {
                                                    "name": c["function"]["name"],
                                                    "arguments": "",
                                                },
                                            }
                                        ]
                                    },
                                )
                            ]
                        )
                    ],
                    [
                        chunk(
                            [
                                choice(
                                    0,
                                    {
                                        "tool_calls": [
                                            {
                                                "index": j,
                                                "function": {
                                                    "arguments": c["function"]["arguments"]
                                                },
                                            }
                                        ]
                                    },
                                )
                            ]
                        )
                    ],
                )
            ],
            tail=[chunk([choice(i, {}, finish_reason)]) for i in range(n)],
            usage_chunk=usage_chunk,
        )

    async def _responses(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        # Lazy: that module builds on this one's helpers.
        from tests.support.openai_responses import respond

        return await respond(self, request, ctx)

    async def _completions(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        body = await self._parse_body(request)
        model = _require_model(body)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            prompt_text = " ".join(str(t) for t in prompt)
        elif isinstance(prompt, str):
            prompt_text = prompt
        else:
            raise _ApiError(
                400,
                "Missing required parameter: 'prompt'.",
                param="prompt",
                code="missing_required_parameter",
            )
        n = _int_param(body, "n", minimum=1) or 1
        limit = _int_param(body, "max_tokens", minimum=0)
        stream = body.get("stream") is True

        prompt_tokens = max(len(_words(prompt_text)), 1)
        words = _reply_words(prompt_text)
        finish_reason = "stop"
        if limit is not None and len(words) > limit:
            words, finish_reason = words[:limit], "length"
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words) * n,
            "total_tokens": prompt_tokens + len(words) * n,
        }

        await self._before_response(ctx)
        if not stream and (reset := self._reset_before_response(request, ctx)) is not None:
            return reset

        call = ServedCall(
            id=f"cmpl-{uuid.uuid4().hex}",
            endpoint="completions",
            model=model,
            stream=stream,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(words) * n,
        )
        created = int(time.time())

        def choice(i: int, text: str, finish: str | None) -> dict[str, Any]:
            return {"text": text, "index": i, "logprobs": None, "finish_reason": finish}

        if not stream:
            obj = {
                "id": call.id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [choice(i, " ".join(words), finish_reason) for i in range(n)],
                "usage": usage,
            }
            return await self._finish_plain(request, ctx, call, obj)

        include_usage = _include_usage(body)

        def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
            obj: dict[str, Any] = {
                "id": call.id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": choices,
            }
            if include_usage:
                obj["usage"] = None
            return obj

        usage_chunk = None
        if include_usage:
            usage_chunk = chunk([])
            usage_chunk["usage"] = usage
        return await self._stream(
            request,
            ctx,
            call,
            head=[],
            content=[
                [chunk([choice(i, piece, None)]) for i in range(n)] for piece in _pieces(words)
            ],
            tail=[chunk([choice(i, "", finish_reason)]) for i in range(n)],
            usage_chunk=usage_chunk,
        )

    async def _embeddings(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        body = await self._parse_body(request)
        model = _require_model(body)
        raw_input = body.get("input")
        inputs: list[str | list[int]]
        if isinstance(raw_input, str) or (
            isinstance(raw_input, list)
            and raw_input
            and all(isinstance(x, int) and not isinstance(x, bool) for x in raw_input)
        ):
            inputs = [raw_input]
        elif (
            isinstance(raw_input, list)
            and raw_input
            and all(
                isinstance(x, str) or (isinstance(x, list) and all(isinstance(t, int) for t in x))
                for x in raw_input
            )
        ):
            inputs = list(raw_input)
        else:
            raise _ApiError(
                400,
                "'input' must be a non-empty string, array of strings, or array of tokens.",
                param="input",
                code="invalid_value",
            )
        dimensions = _int_param(body, "dimensions", minimum=1) or DEFAULT_EMBEDDING_DIMENSIONS
        encoding_format = body.get("encoding_format", "float")
        if encoding_format not in ("float", "base64"):
            raise _ApiError(
                400,
                "Invalid value for 'encoding_format': expected 'float' or 'base64'.",
                param="encoding_format",
                code="invalid_value",
            )

        prompt_tokens = 0
        data: list[dict[str, Any]] = []
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                key = b"s:" + item.encode()
                prompt_tokens += len(_words(item))
            else:
                key = b"t:" + ",".join(str(t) for t in item).encode()
                prompt_tokens += len(item)
            vector = _embedding(key, dimensions)
            encoded: list[float] | str = vector
            if encoding_format == "base64":
                encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        prompt_tokens = max(prompt_tokens, 1)

        await self._before_response(ctx)
        if (reset := self._reset_before_response(request, ctx)) is not None:
            return reset

        call = ServedCall(
            id=f"emb-{uuid.uuid4().hex}",
            endpoint="embeddings",
            model=model,
            stream=False,
            prompt_tokens=prompt_tokens,
            completion_tokens=0,
        )
        obj = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
        return await self._finish_plain(request, ctx, call, obj)

    async def _finish_plain(
        self, request: web.Request, ctx: _Ctx, call: ServedCall, obj: dict[str, Any]
    ) -> web.StreamResponse:
        self.served.append(call)
        self._changed()
        resp, delivered = await self._send_json(request, ctx, obj)
        if delivered:
            call.completed = True
            call.usage_reported = True
            self._changed()
        return resp

    async def _models(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        resp, _ = await self._send_json(
            request, ctx, {"object": "list", "data": [_model_object(MODEL_ID)]}
        )
        return resp

    async def _model(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        model = request.match_info["model"]
        if model != MODEL_ID:
            raise _ApiError(
                404,
                f"The model '{model}' does not exist",
                param="model",
                code="model_not_found",
            )
        resp, _ = await self._send_json(request, ctx, _model_object(MODEL_ID))
        return resp

    async def _not_found(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        raise _ApiError(404, f"Invalid URL ({request.method} {request.path})")


def _model_object(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "loopback"}


def _try_json(body: bytes) -> Any | None:
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


class _Server(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


_S = TypeVar("_S", bound=_Server)


@contextlib.contextmanager
def run_in_thread(upstream: _S) -> Iterator[_S]:
    """Serve ``upstream`` (this module's server, or any with async start/stop, such
    as the Gemini fixture) from its own event loop on a daemon thread.

    Returns once the socket is listening; on exit stops the server and joins the thread,
    raising if either takes longer than a bounded time.
    """
    ready = threading.Event()
    failures: list[BaseException] = []
    handles: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def serve() -> None:
        stop = asyncio.Event()
        await upstream.start()
        try:
            handles.append((asyncio.get_running_loop(), stop))
            ready.set()
            await stop.wait()
        finally:
            await upstream.stop()

    def target() -> None:
        # Failures are re-raised in the caller's thread instead of surfacing as an
        # unhandled thread exception nobody is positioned to act on.
        try:
            asyncio.run(serve())
        except BaseException as exc:
            failures.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=target, name="openai-upstream", daemon=True)
    thread.start()
    if not ready.wait(_START_TIMEOUT_S):
        raise RuntimeError("OpenAIUpstream did not start listening in time")
    if not handles:
        thread.join(_STOP_TIMEOUT_S)
        raise failures[0] if failures else RuntimeError("OpenAIUpstream failed to start")
    loop, stop = handles[0]
    try:
        yield upstream
    finally:
        if thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
        thread.join(_STOP_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError("OpenAIUpstream thread did not stop in time")
        if failures:
            raise failures[0]


async def _serve_until_signalled(upstream: OpenAIUpstream) -> None:
    await upstream.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"LISTENING {upstream.base_url}", flush=True)
    try:
        await stop.wait()
    finally:
        await upstream.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=None)
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="do not keep every request in memory (for long benchmark runs)",
    )
    args = parser.parse_args(argv)
    upstream = OpenAIUpstream(
        args.host, args.port, args.api_key, record_requests=not args.no_record
    )
    asyncio.run(_serve_until_signalled(upstream))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
