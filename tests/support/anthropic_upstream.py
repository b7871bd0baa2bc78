"""A loopback HTTP server that speaks Anthropic's Messages API wire format.

Point an `anthropic` provider's ``base_url`` at :attr:`AnthropicUpstream.base_url`; the
SDK appends ``/v1/messages`` itself. Served:

* ``POST /v1/messages`` -> one ``message`` object, or with ``"stream": true`` server-sent
  events framed ``event: <type>\\ndata: <json>\\n\\n``: ``message_start``, ``ping``, per
  content block ``content_block_start`` / ``content_block_delta`` (``text_delta`` or
  ``input_json_delta``) / ``content_block_stop``, ``message_delta`` (stop reason and
  usage), ``message_stop``.

Auth is the ``x-api-key`` header or ``Authorization: Bearer`` (what the SDK sends
since its 2.x releases), and ``anthropic-version`` is required, as Anthropic requires
them; failures use Anthropic's envelope ``{"type": "error", "error": {"type",
"message"}}`` and every response has a ``request-id`` header.

Deterministic content, with the tokenisation of ``tests.support.openai_upstream`` (a
token is a whitespace-separated word): the reply is ``"echo: "`` + the last user turn's
text, cut at ``max_tokens`` (``stop_reason: max_tokens``) or before the first stop
sequence (``stop_reason: stop_sequence``). Tests script other replies (tool calls, a
stop reason) with :meth:`AnthropicUpstream.script`; a tool_use block's output tokens are
the words of its JSON input.

Input tokens are the words of every text block, system prompt and tool result (at least
1). Prompt caching is modelled: the blocks up to the last one carrying ``cache_control``
form a prefix; the first request with a given prefix reports its words as
``cache_creation_input_tokens``, later ones as ``cache_read_input_tokens``, and
``input_tokens`` is the rest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from tests.support.openai_upstream import _pieces, _reply_words, _words, held

__all__ = ["AnthropicUpstream", "Behaviour", "RecordedRequest", "Scripted", "ServedCall"]

Mode = Literal["ok", "status", "error_event", "hang", "reset_after"]

_SHUTDOWN_TIMEOUT_S = 0.5
_STOP_TIMEOUT_S = 10.0
_POLL_S = 0.02

# Anthropic's error type for each HTTP status it documents.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


@dataclass
class Behaviour:
    """What the next requests do; each request snapshots it when it arrives.

    ``status`` answers with that HTTP status and Anthropic's error body (``retry_after``
    as a ``retry-after`` header); ``error_event`` answers a stream with 200, sends
    ``message_start`` and then an ``error`` event of ``error_type`` (a non-streamed call
    gets the status instead); ``reset_after`` drops the connection after that many events.
    """

    mode: Mode = "ok"
    status: int = 500
    error_type: str | None = None
    retry_after: float | None = None
    reset_after_events: int = 3
    # A pause before each stream event after the first.
    event_delay_s: float = 0.0
    # As openai_upstream.Behaviour.reset_when.
    reset_when: threading.Event | None = None


@dataclass
class Scripted:
    """One scripted reply: text and tool_use blocks, in that order."""

    text: str = ""
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    stop_reason: str | None = None


@dataclass
class RecordedRequest:
    """One request as received. Header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any | None

    @property
    def body(self) -> dict[str, Any]:
        """The JSON body, which the test expects to be an object."""
        assert isinstance(self.json, dict), self.json
        return self.json


@dataclass
class ServedCall:
    """One message whose response was started: the ground truth for usage."""

    id: str
    model: str
    stream: bool
    input_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int
    output_tokens: int
    events_sent: int = 0
    completed: bool = False

    @property
    def prompt_tokens(self) -> int:
        """All input, as OpenAI counts it."""
        return self.input_tokens + self.cache_read_input_tokens + self.cache_creation_input_tokens


class _ApiError(Exception):
    def __init__(self, status: int, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or ERROR_TYPES.get(status, "api_error")


def _error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


def _block_words(block: Any) -> list[str]:
    if isinstance(block, str):
        return _words(block)
    if not isinstance(block, dict):
        return []
    if block.get("type") == "text":
        return _words(str(block.get("text", "")))
    if block.get("type") == "tool_result":
        content = block.get("content", "")
        blocks = content if isinstance(content, list) else [content]
        return [w for b in blocks for w in _block_words(b)]
    return []


def _blocks(content: Any) -> list[Any]:
    return content if isinstance(content, list) else [content]


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {kind}\ndata: {payload}\n\n".encode()


class AnthropicUpstream:
    """The fake Messages API. Use ``async with AnthropicUpstream(api_key=...) as up``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None):
        self.host = host
        self.port = port
        self.api_key = api_key
        self.behaviour = Behaviour()
        self.base_url = ""
        self.requests: list[RecordedRequest] = []
        self.served: list[ServedCall] = []
        self.disconnects = 0
        self._scripted: list[Scripted] = []
        self._cached_prefixes: set[str] = set()
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False

    # -- scripting and observation ------------------------------------------------

    def script(self, *replies: Scripted) -> None:
        """The next requests' replies, in order; the echo reply once they run out."""
        self._scripted.extend(replies)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def reset(self) -> None:
        self.behaviour = Behaviour()
        self.requests.clear()
        self.served.clear()
        self._scripted.clear()
        self._cached_prefixes.clear()
        self.disconnects = 0

    async def wait_for(self, predicate: Callable[[], bool], within_s: float = 5.0) -> bool:
        """Poll ``predicate`` on the server's loop; False (not an error) on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while not predicate():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(_POLL_S)
        return True

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/messages", self._handle)
        runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=_SHUTDOWN_TIMEOUT_S, access_log=None
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self.base_url = f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        if self._runner is None:
            return
        self._stopping = True
        pending = [t for t in self._tasks if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=_STOP_TIMEOUT_S)
        await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> AnthropicUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- the endpoint -------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        behaviour = dataclasses.replace(self.behaviour)
        request_id = f"req_{uuid.uuid4().hex[:24]}"
        try:
            body = await request.read()
            try:
                parsed: Any = json.loads(body) if body else None
            except ValueError:
                parsed = None
            self.requests.append(
                RecordedRequest(
                    method=request.method,
                    path=request.path,
                    headers={k.lower(): v for k, v in request.headers.items()},
                    json=parsed,
                )
            )
            try:
                self._check(request, parsed)
                assert isinstance(parsed, dict)
                stream = bool(parsed.get("stream"))
                if behaviour.mode == "status" or (behaviour.mode == "error_event" and not stream):
                    raise _ApiError(
                        behaviour.status, "Scripted failure.", error_type=behaviour.error_type
                    )
                if behaviour.mode == "hang":
                    # Never resolves: ends only by cancellation (client gone or stop()).
                    await asyncio.get_running_loop().create_future()
                message, call = self._message(parsed)
            except _ApiError as err:
                headers = {"request-id": request_id}
                if err.status in (429, 529) and behaviour.retry_after is not None:
                    headers["retry-after"] = f"{behaviour.retry_after:g}"
                return web.json_response(
                    _error_body(err.error_type, err.message), status=err.status, headers=headers
                )
            self.served.append(call)
            if not call.stream:
                resp = web.json_response(message, headers={"request-id": request_id})
                await resp.prepare(request)
                await resp.write_eof()
                call.completed = True
                return resp
            return await self._stream(request, behaviour, request_id, message, call)
        except asyncio.CancelledError:
            if not self._stopping:
                self.disconnects += 1
            raise
        finally:
            self._tasks.discard(task)

    def _check(self, request: web.Request, body: Any) -> None:
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        presented = request.headers.get("x-api-key") or bearer
        if self.api_key is not None and presented != self.api_key:
            raise _ApiError(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            raise _ApiError(400, "anthropic-version: header is required")
        if not isinstance(body, dict):
            raise _ApiError(400, "request body is not valid JSON")
        for name in ("model", "messages", "max_tokens"):
            if name not in body:
                raise _ApiError(400, f"{name}: Field required")
        turns = body["messages"]
        if not isinstance(turns, list) or not turns:
            raise _ApiError(400, "messages: at least one message is required")
        for i, turn in enumerate(turns):
            if turn.get("role") not in ("user", "assistant"):
                raise _ApiError(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
            if i and turn["role"] == turns[i - 1]["role"]:
                raise _ApiError(400, "messages: roles must alternate between user and assistant")

    def _usage(self, body: dict[str, Any]) -> tuple[int, int, int]:
        """(input, cache read, cache write) tokens, by the module's caching rule."""
        blocks = _blocks(body.get("system", [])) + [
            b for turn in body["messages"] for b in _blocks(turn.get("content"))
        ]
        words = [len(_block_words(b)) for b in blocks]
        marks = [i for i, b in enumerate(blocks) if isinstance(b, dict) and "cache_control" in b]
        total = max(sum(words), 1)
        if not marks:
            return total, 0, 0
        prefix = blocks[: marks[-1] + 1]
        key = hashlib.sha256(json.dumps(prefix, sort_keys=True).encode()).hexdigest()
        cached = sum(words[: marks[-1] + 1])
        read = key in self._cached_prefixes
        self._cached_prefixes.add(key)
        return total - cached, cached if read else 0, 0 if read else cached

    def _message(self, body: dict[str, Any]) -> tuple[dict[str, Any], ServedCall]:
        content: list[dict[str, Any]] = []
        scripted = self._scripted.pop(0) if self._scripted else None
        output = 0
        if scripted is not None:
            stop_reason = scripted.stop_reason or (
                "tool_use" if scripted.tool_calls else "end_turn"
            )
            if scripted.text:
                content.append({"type": "text", "text": scripted.text})
                output += len(_words(scripted.text))
            for name, arguments in scripted.tool_calls:
                block_id = f"toolu_{uuid.uuid4().hex[:24]}"
                content.append(
                    {"type": "tool_use", "id": block_id, "name": name, "input": arguments}
                )
                output += len(_words(json.dumps(arguments)))
        else:
            users = [t for t in body["messages"] if t["role"] == "user"]
            words = _reply_words(
                " ".join(" ".join(_block_words(b)) for b in _blocks(users[-1]["content"]))
            )
            stop_reason = "end_turn"
            text = " ".join(words)
            for stop in body.get("stop_sequences") or ():
                if stop in text:
                    text, stop_reason = text[: text.index(stop)], "stop_sequence"
            words = _words(text)
            if len(words) > body["max_tokens"]:
                words, stop_reason = words[: body["max_tokens"]], "max_tokens"
            content.append({"type": "text", "text": " ".join(words)})
            output = len(words)
        fresh, read, write = self._usage(body)
        call = ServedCall(
            id=f"msg_{uuid.uuid4().hex[:24]}",
            model=str(body["model"]),
            stream=bool(body.get("stream")),
            input_tokens=fresh,
            cache_read_input_tokens=read,
            cache_creation_input_tokens=write,
            output_tokens=output,
        )
        message = {
            "id": call.id,
            "type": "message",
            "role": "assistant",
            "model": call.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": fresh,
                "cache_creation_input_tokens": write,
                "cache_read_input_tokens": read,
                "output_tokens": output,
                "service_tier": "standard",
            },
        }
        return message, call

    def _events(self, message: dict[str, Any], behaviour: Behaviour) -> list[bytes]:
        usage = message["usage"]
        start = message | {
            "content": [],
            "stop_reason": None,
            "usage": usage | {"output_tokens": 1},
        }
        events = [
            _sse("message_start", {"type": "message_start", "message": start}),
            _sse("ping", {"type": "ping"}),
        ]
        if behaviour.mode == "error_event":
            error_type = behaviour.error_type or ERROR_TYPES.get(behaviour.status, "api_error")
            return [*events, _sse("error", _error_body(error_type, "Scripted failure."))]
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                start_block: dict[str, Any] = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": p} for p in _pieces(_words(block["text"]))]
            else:
                start_block = block | {"input": {}}
                # Real streams cut the JSON anywhere; two pieces are enough to join.
                raw = json.dumps(block["input"], separators=(",", ":"))
                cut = len(raw) // 2
                deltas = [
                    {"type": "input_json_delta", "partial_json": part}
                    for part in (raw[:cut], raw[cut:])
                ]
            events.append(
                _sse(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": start_block},
                )
            )
            events.extend(
                _sse(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": d},
                )
                for d in deltas
            )
            events.append(
                _sse("content_block_stop", {"type": "content_block_stop", "index": index})
            )
        delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
        events.append(
            _sse("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        )
        events.append(_sse("message_stop", {"type": "message_stop"}))
        return events

    async def _stream(
        self,
        request: web.Request,
        behaviour: Behaviour,
        request_id: str,
        message: dict[str, Any],
        call: ServedCall,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "request-id": request_id,
            },
        )
        await resp.prepare(request)
        try:
            for event in self._events(message, behaviour):
                if (
                    behaviour.mode == "reset_after"
                    and call.events_sent >= behaviour.reset_after_events
                ):
                    await held(behaviour.reset_when)
                    if request.transport is not None:
                        request.transport.abort()
                    return resp
                if call.events_sent and behaviour.event_delay_s > 0:
                    await asyncio.sleep(behaviour.event_delay_s)
                await resp.write(event)
                call.events_sent += 1
            await resp.write_eof()
        except ConnectionError:
            self.disconnects += 1
            return resp
        call.completed = behaviour.mode == "ok"
        return resp
