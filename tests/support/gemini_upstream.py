"""A loopback HTTP server that speaks the Gemini API's REST wire format (v1beta).

Point a `gemini` provider's ``base_url`` at :attr:`GeminiUpstream.base_url`; the
google-genai SDK appends ``/v1beta/models/{model}:{method}`` itself. Served:

* ``POST /v1beta/models/{model}:generateContent`` -> one ``GenerateContentResponse``
* ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` -> server-sent events,
  each ``data: <GenerateContentResponse JSON>\\r\\n\\r\\n`` (Google's framing, no
  ``[DONE]``), one per reply word; the last carries ``finishReason``
* ``POST /v1beta/models/{model}:embedContent`` and ``:batchEmbedContents``
* speech (``responseModalities: ["AUDIO"]``: L16 PCM in ``inlineData``) and
  transcripts of ``inlineData`` WAV parts: see :mod:`tests.support.gemini_audio`

Auth is the ``x-goog-api-key`` header (or ``?key=``); anything else gets 401 with
Google's error envelope ``{"error": {"code", "message", "status"}}``. Requests are read
the way Google's JSON parser reads them, which accepts both lowerCamel and snake_case
field names (the SDK sends ``inlineData: {"mime_type": ...}``).

Deterministic content, with the same tokenisation as ``tests.support.openai_upstream``
so the two provider kinds can be compared: the reply is ``"echo: "`` + the last user
turn's text; ``promptTokenCount`` = words across every text part (system instruction
included, at least 1), ``candidatesTokenCount`` = reply words (after ``maxOutputTokens``,
which sets ``finishReason: MAX_TOKENS``) times ``candidateCount``. Embeddings are the
OpenAI loopback's vectors for the same text (8 dimensions unless asked otherwise).

Tests script other replies with :meth:`GeminiUpstream.script`: text, then ``functionCall``
parts (the first one signed with a ``thoughtSignature``, as Gemini 3 signs them); a
stream sends the text word by word and the calls whole in one last response, as Gemini
does. A call's tokens are the words of its JSON arguments.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from tests.support import gemini_audio
from tests.support.openai_upstream import (
    DEFAULT_EMBEDDING_DIMENSIONS,
    _embedding,
    _pieces,
    _reply_words,
    _words,
    held,
)

__all__ = ["Behaviour", "GeminiUpstream", "RecordedRequest", "Scripted", "ServedCall"]

Mode = Literal["ok", "status", "hang", "reset_after", "slow", "blocked"]

_SHUTDOWN_TIMEOUT_S = 0.5
_STOP_TIMEOUT_S = 10.0
_POLL_S = 0.02

# google.rpc.Code names Google puts in error.status for each HTTP status.
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@dataclass
class Behaviour:
    """What the next requests do; each request snapshots it when it arrives.

    ``retry_after`` goes where Google puts it: a ``google.rpc.RetryInfo`` detail
    (``retryDelay: "7s"``) in a 429's error body.
    """

    mode: Mode = "ok"
    status: int = 500
    retry_after: float | None = None
    reset_after_chunks: int = 2
    chunk_delay_s: float = 0.0
    first_byte_delay_s: float = 0.0
    block_reason: str = "SAFETY"
    # As openai_upstream.Behaviour.reset_when.
    reset_when: threading.Event | None = None


@dataclass
class Scripted:
    """One scripted reply: text, then function calls."""

    text: str = ""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    thought_signature: bytes = b"signed-thought"


@dataclass
class RecordedRequest:
    """One request as received. Header names are lower-cased."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any | None

    @property
    def body(self) -> dict[str, Any]:
        """The JSON body, which the test expects to be an object."""
        assert isinstance(self.json, dict), self.json
        return self.json


@dataclass
class ServedCall:
    """One generation or embedding whose response was started: the ground truth."""

    id: str
    method: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    chunks_sent: int = 0
    completed: bool = False


class _ApiError(Exception):
    def __init__(self, status: int, message: str, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []


@dataclass
class _Ctx:
    behaviour: Behaviour
    # Set when we tore the connection down on purpose: not a client disconnect.
    aborted_by_us: bool = False
    disconnect_counted: bool = False


def _field(obj: Any, camel: str) -> Any:
    """A request field under either spelling Google's JSON parser accepts."""
    if not isinstance(obj, dict):
        return None
    if camel in obj:
        return obj[camel]
    return obj.get("".join(f"_{c.lower()}" if c.isupper() else c for c in camel))


def _text(content: Any) -> str:
    parts = _field(content, "parts") or []
    return " ".join(
        p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)
    )


def _pretty(obj: Any, status: int = 200) -> web.Response:
    # Google pretty-prints non-streamed JSON bodies with two-space indentation.
    return web.Response(
        status=status,
        body=json.dumps(obj, indent=2, ensure_ascii=False).encode(),
        content_type="application/json",
        charset="UTF-8",
    )


class GeminiUpstream:
    """The fake Gemini API. Use ``async with GeminiUpstream(api_key=...) as up``."""

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
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False

    # -- observation --------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Requests whose handler is still running."""
        return len(self._tasks)

    def script(self, *replies: Scripted) -> None:
        """The next generations' replies, in order; the echo reply once they run out."""
        self._scripted.extend(replies)

    def reset(self) -> None:
        self._scripted.clear()
        self.behaviour = Behaviour()
        self.requests.clear()
        self.served.clear()
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
        app.router.add_post("/{version:v1beta|v1}/models/{call}", self._handle)
        # handler_cancellation: a client hanging up cancels the handler, which is
        # how disconnects are counted and hangs end.
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

    async def __aenter__(self) -> GeminiUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- plumbing -----------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        ctx = _Ctx(behaviour=dataclasses.replace(self.behaviour))
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
                    query=dict(request.query),
                    headers={k.lower(): v for k, v in request.headers.items()},
                    json=parsed,
                )
            )
            try:
                self._check_auth(request)
                if not isinstance(parsed, dict):
                    raise _ApiError(400, "Invalid JSON payload received.")
                model, _, method = request.match_info["call"].partition(":")
                handler = self._handlers().get(method)
                if handler is None:
                    raise _ApiError(404, f"Method {method!r} not found.")
                await self._before_response(ctx)
                return await handler(request, ctx, model, parsed)
            except _ApiError as err:
                error = {"code": err.status, "message": err.message}
                error["status"] = _STATUS_NAMES.get(err.status, "UNKNOWN")
                if err.details:
                    error["details"] = err.details
                return _pretty({"error": error}, err.status)
        except asyncio.CancelledError:
            self._note_disconnect(ctx)
            raise
        finally:
            self._tasks.discard(task)

    def _handlers(
        self,
    ) -> dict[
        str, Callable[[web.Request, _Ctx, str, dict[str, Any]], Awaitable[web.StreamResponse]]
    ]:
        return {
            "generateContent": self._generate,
            "streamGenerateContent": self._generate,
            "embedContent": self._embed,
            "batchEmbedContents": self._embed,
        }

    def _note_disconnect(self, ctx: _Ctx) -> None:
        if ctx.aborted_by_us or ctx.disconnect_counted or self._stopping:
            return
        ctx.disconnect_counted = True
        self.disconnects += 1

    def _check_auth(self, request: web.Request) -> None:
        if self.api_key is None:
            return
        presented = request.headers.get("x-goog-api-key") or request.query.get("key")
        if presented != self.api_key:
            raise _ApiError(401, "Request had invalid authentication credentials.")

    async def _before_response(self, ctx: _Ctx) -> None:
        behaviour = ctx.behaviour
        if behaviour.mode == "status":
            details = []
            if behaviour.retry_after is not None:
                details.append(
                    {
                        "@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": f"{behaviour.retry_after:g}s",
                    }
                )
            raise _ApiError(behaviour.status, f"Scripted status {behaviour.status}.", details)
        if behaviour.mode == "hang":
            # Never resolves: ends only by cancellation (client gone or stop()).
            await asyncio.get_running_loop().create_future()
        if behaviour.mode == "slow" and behaviour.first_byte_delay_s > 0:
            await asyncio.sleep(behaviour.first_byte_delay_s)

    def _abort(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        ctx.aborted_by_us = True
        if request.transport is not None:
            request.transport.abort()
        # aiohttp's attempt to send this fails quietly: the socket is gone.
        return web.Response(status=500)

    # -- endpoints ----------------------------------------------------------------

    async def _generate(
        self, request: web.Request, ctx: _Ctx, model: str, body: dict[str, Any]
    ) -> web.StreamResponse:
        contents = _field(body, "contents")
        if not isinstance(contents, list) or not contents:
            raise _ApiError(400, "* GenerateContentRequest.contents: contents is not specified")
        system = _field(body, "systemInstruction")
        config = _field(body, "generationConfig") or {}
        n = _field(config, "candidateCount") or 1
        limit = _field(config, "maxOutputTokens")
        all_text = [_text(c) for c in contents] + ([_text(system)] if system else [])
        prompt_tokens = max(sum(len(_words(t)) for t in all_text), 1)
        users = [c for c in contents if _field(c, "role") in (None, "user")]
        if gemini_audio.wants_audio(body):
            return await self._speak(request, ctx, model, _text(users[-1]), prompt_tokens)
        words = _reply_words(_text(users[-1]) if users else "")
        try:
            heard = gemini_audio.heard_seconds(users[-1]) if users else None
        except ValueError as exc:
            raise _ApiError(400, str(exc)) from None
        if heard is not None:
            words = _words(f"heard {heard:.2f} seconds")
            prompt_tokens += gemini_audio.audio_tokens(heard)
        finish = "STOP"
        scripted = self._scripted.pop(0) if self._scripted else None
        calls: list[dict[str, Any]] = []
        if scripted is not None:
            words = _words(scripted.text)
            signature = base64.b64encode(scripted.thought_signature).decode()
            calls = [
                {"functionCall": {"name": name, "args": args}}
                | ({"thoughtSignature": signature} if i == 0 else {})
                for i, (name, args) in enumerate(scripted.calls)
            ]
        if limit is not None and len(words) > limit:
            words, finish = words[:limit], "MAX_TOKENS"
        call_tokens = sum(len(_words(json.dumps(c["functionCall"]["args"]))) for c in calls)
        call = ServedCall(
            id=uuid.uuid4().hex[:22],
            method=request.match_info["call"].partition(":")[2],
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=0
            if ctx.behaviour.mode == "blocked"
            else (len(words) + call_tokens) * n,
        )

        def response(
            pieces: list[str], done: bool, sent: int, with_calls: bool = False
        ) -> dict[str, Any]:
            out: dict[str, Any] = {}
            if ctx.behaviour.mode == "blocked":
                out["promptFeedback"] = {"blockReason": ctx.behaviour.block_reason}
            else:
                out["candidates"] = [
                    {
                        "content": {
                            "parts": [{"text": p} for p in pieces] + (calls if with_calls else []),
                            "role": "model",
                        },
                        **({"finishReason": finish} if done else {}),
                        "index": i,
                    }
                    for i in range(n)
                ]
            out["usageMetadata"] = {
                "promptTokenCount": prompt_tokens,
                "candidatesTokenCount": sent * n,
                "totalTokenCount": prompt_tokens + sent * n,
            }
            out["modelVersion"] = model
            out["responseId"] = call.id
            return out

        if ctx.behaviour.mode == "reset_after" and call.method == "generateContent":
            return self._abort(request, ctx)
        self.served.append(call)
        if call.method == "generateContent":
            text = [" ".join(words)] if words or not calls else []
            total = len(words) + call_tokens
            return await self._send(
                request, ctx, call, _pretty(response(text, True, total, with_calls=True))
            )
        pieces = _pieces(words) if ctx.behaviour.mode != "blocked" else []
        events = [
            response([p], i == len(pieces) - 1 and not calls, i + 1) for i, p in enumerate(pieces)
        ]
        if calls:
            events.append(response([], True, len(words) + call_tokens, with_calls=True))
        return await self._stream(request, ctx, call, events or [response([], True, 0)])

    async def _speak(
        self, request: web.Request, ctx: _Ctx, model: str, text: str, prompt_tokens: int
    ) -> web.StreamResponse:
        method = request.match_info["call"].partition(":")[2]
        call = ServedCall(uuid.uuid4().hex[:22], method, model, prompt_tokens, 0)
        call.completion_tokens, responses = gemini_audio.speech_responses(
            text, model, call.id, prompt_tokens, stream=method == "streamGenerateContent"
        )
        if ctx.behaviour.mode == "blocked":
            call.completion_tokens = 0
            feedback = {"blockReason": ctx.behaviour.block_reason}
            responses = [{"promptFeedback": feedback, "usageMetadata": {"promptTokenCount": 1}}]
        self.served.append(call)
        if method == "generateContent":
            return await self._send(request, ctx, call, _pretty(responses[0]))
        return await self._stream(request, ctx, call, responses)

    async def _embed(
        self, request: web.Request, ctx: _Ctx, model: str, body: dict[str, Any]
    ) -> web.StreamResponse:
        batch = request.match_info["call"].endswith(":batchEmbedContents")
        items = _field(body, "requests") if batch else [body]
        if not isinstance(items, list) or not items:
            raise _ApiError(400, "* BatchEmbedContentsRequest.requests: requests is required")
        vectors = []
        for item in items:
            if batch and _field(item, "model") != f"models/{model}":
                raise _ApiError(400, "Model in request does not match the model in the URL.")
            text = _text(_field(item, "content"))
            dims = _field(item, "outputDimensionality") or DEFAULT_EMBEDDING_DIMENSIONS
            vectors.append({"values": _embedding(b"s:" + text.encode(), dims)})
        if ctx.behaviour.mode == "reset_after":
            return self._abort(request, ctx)
        call = ServedCall(
            id=uuid.uuid4().hex[:22],
            method="batchEmbedContents" if batch else "embedContent",
            model=model,
            prompt_tokens=sum(len(_words(_text(_field(i, "content")))) for i in items),
            completion_tokens=0,
        )
        self.served.append(call)
        out = {"embeddings": vectors} if batch else {"embedding": vectors[0]}
        return await self._send(request, ctx, call, _pretty(out))

    async def _send(
        self, request: web.Request, ctx: _Ctx, call: ServedCall, resp: web.Response
    ) -> web.StreamResponse:
        try:
            await resp.prepare(request)
            await resp.write_eof()
        except ConnectionError:
            self._note_disconnect(ctx)
            return resp
        call.completed = True
        return resp

    async def _stream(
        self, request: web.Request, ctx: _Ctx, call: ServedCall, events: list[dict[str, Any]]
    ) -> web.StreamResponse:
        behaviour = ctx.behaviour
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        try:
            await resp.prepare(request)
            for event in events:
                if (
                    behaviour.mode == "reset_after"
                    and call.chunks_sent >= behaviour.reset_after_chunks
                ):
                    await held(behaviour.reset_when)
                    self._abort(request, ctx)
                    return resp
                if call.chunks_sent and behaviour.chunk_delay_s > 0:
                    await asyncio.sleep(behaviour.chunk_delay_s)
                payload = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
                await resp.write(b"data: " + payload.encode() + b"\r\n\r\n")
                call.chunks_sent += 1
            await resp.write_eof()
        except ConnectionError:
            self._note_disconnect(ctx)
            return resp
        call.completed = True
        return resp
