"""The `gemini` provider kind: Google's Gemini API through the official
`google-genai` SDK, answering in the same OpenAI shapes (and stream sequence)
as the `openai` kind, so the router treats both alike.

One genai.Client per provider, on one aiohttp session: the connection pool.
The SDK's retries are off (an explicit single attempt: without retry_options
it quietly retries a refused connection after sleeping 1-10 s), because
retrying is the router's decision. Its automatic continuation (follow-up
requests when Gemini stops with finish reason CONTINUATION) stays on: that is
one answer the server chose to deliver in parts. The API version is pinned to
v1beta (this SDK release defaults to v1); `options: {api_version: v1}` overrides it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import mimetypes
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import Any
from urllib.parse import unquote_to_bytes, urlparse

import aiohttp
import httpx2
import pydantic
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from google.protobuf import json_format

from switchboard.common.v1 import openai_pb2
from switchboard.provider.v1 import provider_pb2
from switchboard_common.config import ProviderConfig
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.logs import redact
from switchboard_common.values import texts, to_python
from switchboard_provider.adapters import gemini_tools
from switchboard_provider.adapters.base import message_text
from switchboard_provider.meter import UsageMeter, estimate_tokens

DEFAULT_API_VERSION = "v1beta"
# The SDK refuses to build a client without a key (and would otherwise take
# GEMINI_API_KEY from the environment behind the config's back).
_NO_KEY = "no-key"
_GOOGLE_KEY = re.compile(r"AIza[0-9A-Za-z_\-]{20,}")

_FILTERED = ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY")
FINISH_REASONS: dict[str, str] = {"STOP": "stop", "MAX_TOKENS": "length"} | {
    r: "content_filter" for r in _FILTERED
}

# What the SDK raises for a failed exchange; anything else is our own bug.
_UPSTREAM_FAILURES = (
    genai_errors.APIError,
    genai_errors.UnknownApiResponseError,
    aiohttp.ClientError,
    httpx2.TransportError,
    TimeoutError,
    OSError,
    pydantic.ValidationError,
)


def _unsupported(what: str, param: str) -> SwitchboardError:
    # Rejected rather than dropped: silently ignoring tools or logprobs would
    # give the caller a different kind of answer than the one asked for.
    return SwitchboardError(
        R.ERROR_REASON_INVALID_REQUEST,
        f"the gemini provider kind does not support {what}",
        param=param,
    )


# -- request mapping -------------------------------------------------------------


def _data_url(url: str) -> types.Part:
    header, sep, payload = url.removeprefix("data:").partition(",")
    if not sep:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST, "malformed data: URL", param="messages"
        )
    mime, *flags = header.split(";")
    try:
        data = (
            base64.b64decode(payload, validate=True)
            if "base64" in flags
            else unquote_to_bytes(payload)
        )
    except binascii.Error:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST, "data: URL is not valid base64", param="messages"
        ) from None
    return types.Part(inline_data=types.Blob(data=data, mime_type=mime or "image/jpeg"))


def image_part(url: str) -> types.Part:
    if url.startswith("data:"):
        return _data_url(url)
    guessed = mimetypes.guess_type(urlparse(url).path)[0]
    return types.Part(file_data=types.FileData(file_uri=url, mime_type=guessed or "image/jpeg"))


def content_parts(content: object) -> list[types.Part]:
    """OpenAI message content (a string or a list of parts) as Gemini parts."""
    if isinstance(content, str):
        return [types.Part(text=content)] if content else []
    if content is None:
        return []
    if not isinstance(content, list):
        raise _unsupported("this message content", "messages")
    parts: list[types.Part] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append(types.Part(text=str(part.get("text", ""))))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append(image_part(str(url or "")))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            parts.append(
                _data_url(f"data:audio/{audio.get('format', 'wav')};base64,{audio.get('data', '')}")
            )
        else:
            raise _unsupported(f"content parts of type {kind!r}", "messages")
    return parts


def _stop(value: object) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    return None


def _config(params: Any) -> types.GenerateContentConfig:
    """The sampling fields both params messages share."""
    config = types.GenerateContentConfig(
        # No Python callables are ever passed; disabling AFC keeps the SDK on
        # its direct path (one request, no per-call INFO log).
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    if params.HasField("temperature"):
        config.temperature = params.temperature
    if params.HasField("top_p"):
        config.top_p = params.top_p
    if params.HasField("n"):
        config.candidate_count = params.n
    if params.HasField("seed"):
        config.seed = params.seed
    if params.HasField("presence_penalty"):
        config.presence_penalty = params.presence_penalty
    if params.HasField("frequency_penalty"):
        config.frequency_penalty = params.frequency_penalty
    if params.HasField("max_tokens"):
        config.max_output_tokens = params.max_tokens
    if params.HasField("stop"):
        config.stop_sequences = _stop(to_python(params.stop))
    if params.logit_bias:
        raise _unsupported("logit_bias", "logit_bias")
    return config


# OpenAI's reasoning_effort as Gemini's thinking level; "none" turns thinking off.
_THINKING_LEVELS = {"minimal": "MINIMAL", "low": "LOW", "medium": "MEDIUM", "high": "HIGH"}


def _thinking(effort: str) -> types.ThinkingConfig | None:
    if effort == "none":
        return types.ThinkingConfig(thinking_budget=0)
    level = _THINKING_LEVELS.get(effort) or effort.upper()
    if level not in types.ThinkingLevel.__members__:
        raise _unsupported(f"reasoning_effort {effort!r}", "reasoning_effort")
    return types.ThinkingConfig(thinking_level=types.ThinkingLevel(level))


def _response_format(fmt: dict[str, Any], config: types.GenerateContentConfig) -> None:
    kind = fmt.get("type")
    if kind in ("json_object", "json_schema"):
        config.response_mime_type = "application/json"
    if kind == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema is not None:
            config.response_json_schema = schema


def chat_request(
    params: openai_pb2.ChatCompletionParams,
) -> tuple[list[types.Content], types.GenerateContentConfig]:
    if params.logprobs or params.HasField("top_logprobs"):
        raise _unsupported("logprobs", "logprobs")
    if params.HasField("audio") or "audio" in params.modalities:
        raise _unsupported("audio output", "modalities")
    config = _config(params)
    gemini_tools.declare(params, config)
    if params.reasoning_effort:
        config.thinking_config = _thinking(params.reasoning_effort)
    if params.HasField("max_completion_tokens"):
        config.max_output_tokens = params.max_completion_tokens
    if params.HasField("response_format"):
        _response_format(json_format.MessageToDict(params.response_format), config)
    system: list[types.Part] = []
    contents: list[types.Content] = []
    tool_names: dict[str, str] = {}  # a function response names its function
    for message in params.messages:
        content = to_python(message.content) if message.HasField("content") else None
        if message.role in ("system", "developer"):
            text = message_text(content)
            if text:
                system.append(types.Part(text=text))
        elif message.role == "tool":
            gemini_tools.add_result(contents, message, tool_names)
        elif message.role in ("user", "assistant"):
            parts = content_parts(content) + gemini_tools.call_parts(list(message.tool_calls))
            gemini_tools.call_names(list(message.tool_calls), tool_names)
            if parts:
                role = "model" if message.role == "assistant" else "user"
                contents.append(types.Content(role=role, parts=parts))
        else:
            raise _unsupported(f"messages with role {message.role!r}", "messages")
    if system:
        config.system_instruction = types.Content(parts=system)
    return contents, config


def completion_request(
    params: openai_pb2.CompletionParams,
) -> tuple[list[types.Content], types.GenerateContentConfig]:
    if params.echo or params.HasField("logprobs") or params.suffix:
        raise _unsupported("echo, logprobs or suffix", "prompt")
    if params.HasField("best_of") and params.best_of != (params.n if params.HasField("n") else 1):
        raise _unsupported("best_of", "best_of")
    prompt = to_python(params.prompt) if params.HasField("prompt") else ""
    if isinstance(prompt, list) and not all(isinstance(p, str) for p in prompt):
        raise _unsupported("token-id prompts", "prompt")
    prompts = texts(prompt)
    if len(prompts) > 1:
        raise _unsupported("more than one prompt per request", "prompt")
    contents = [types.Content(role="user", parts=[types.Part(text=prompts[0] if prompts else "")])]
    return contents, _config(params)


# -- response mapping ------------------------------------------------------------


def finish_reason(reason: types.FinishReason | None) -> str:
    return FINISH_REASONS.get(str(reason.value), "stop") if reason is not None else "stop"


def candidate_text(candidate: types.Candidate) -> str:
    parts = candidate.content.parts if candidate.content and candidate.content.parts else []
    # Thought summaries are the model's reasoning, not its answer.
    return "".join(p.text for p in parts if p.text and not p.thought)


def usage(
    meta: types.GenerateContentResponseUsageMetadata | None, chat: bool = True
) -> openai_pb2.Usage | None:
    if meta is None:
        return None
    prompt = meta.prompt_token_count or 0
    cached = meta.cached_content_token_count or 0
    thoughts = meta.thoughts_token_count or 0
    # OpenAI counts reasoning inside completion_tokens (reasoning_tokens is a
    # breakdown of it); Gemini counts thoughts apart but bills them as output.
    completion = (meta.candidates_token_count or 0) + thoughts
    out = openai_pb2.Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=meta.total_token_count or prompt + completion,
    )
    # OpenAI's chat usage always has the details objects; its legacy
    # completions usage has them only when they say something.
    if chat or cached:
        out.prompt_tokens_details.cached_tokens = cached
    if chat or thoughts:
        out.completion_tokens_details.reasoning_tokens = thoughts
    return out


def raise_if_blocked(response: types.GenerateContentResponse) -> None:
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason and not response.candidates:
        raise SwitchboardError(
            R.ERROR_REASON_UPSTREAM_INVALID_REQUEST,
            f"Gemini blocked the prompt: {feedback.block_reason.value}",
        )


def _candidates(response: types.GenerateContentResponse) -> list[types.Candidate]:
    # proto3 JSON omits index 0, so the SDK reports it as None.
    return sorted(response.candidates or (), key=lambda c: c.index or 0)


class Reply:
    """The OpenAI-shaped objects of one attempt: one id, created time and model."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat = chat
        self.id = f"gemini-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def answer(
        self, response: types.GenerateContentResponse, meter: UsageMeter
    ) -> provider_pb2.StreamGenerateResponse:
        """The one object of a non-streamed answer; reports it to `meter`."""
        raise_if_blocked(response)
        candidates = _candidates(response)
        if not candidates:
            raise SwitchboardError(
                R.ERROR_REASON_UPSTREAM_ERROR, "Gemini answered with no candidate"
            )
        meter.set_provider_request_id(response.response_id)
        self.model = response.model_version or self.model
        for c in candidates:
            meter.add_output_text(candidate_text(c))
        total = usage(response.usage_metadata, self.chat)
        if total is not None:
            meter.report(total)
        if self.chat:
            chat = openai_pb2.ChatCompletion(
                id=self.id, object="chat.completion", created=self.created, model=self.model
            )
            for c in candidates:
                calls = gemini_tools.tool_calls(c)
                said = candidate_text(c)
                reason = finish_reason(c.finish_reason)
                message = openai_pb2.ChatCompletionMessage(role="assistant", tool_calls=calls)
                if said or not calls:  # null content for an answer of tool calls only
                    message.content = said
                for call in calls:
                    meter.add_output_text(call.function.arguments)
                chat.choices.add(
                    index=c.index or 0,
                    finish_reason="tool_calls" if calls and reason == "stop" else reason,
                    message=message,
                )
            if total is not None:
                chat.usage.CopyFrom(total)
            return provider_pb2.StreamGenerateResponse(chat_completion=chat)
        text = self._completion()
        for c in candidates:
            text.choices.add(
                text=candidate_text(c),
                index=c.index or 0,
                finish_reason=finish_reason(c.finish_reason),
            )
        if total is not None:
            text.usage.CopyFrom(total)
        return provider_pb2.StreamGenerateResponse(completion=text)

    def _chunk(self) -> openai_pb2.ChatCompletionChunk:
        return openai_pb2.ChatCompletionChunk(
            id=self.id, object="chat.completion.chunk", created=self.created, model=self.model
        )

    def _completion(self) -> openai_pb2.Completion:
        return openai_pb2.Completion(
            id=self.id, object="text_completion", created=self.created, model=self.model
        )

    def role(self, indices: Iterable[int]) -> provider_pb2.StreamGenerateResponse:
        chunk = self._chunk()
        for i in indices:
            chunk.choices.add(index=i).delta.CopyFrom(
                openai_pb2.ChatCompletionDelta(role="assistant", content="")
            )
        return provider_pb2.StreamGenerateResponse(chat_chunk=chunk)

    def delta(
        self,
        pieces: dict[int, str],
        calls: dict[int, list[openai_pb2.ToolCallDelta]] | None = None,
    ) -> provider_pb2.StreamGenerateResponse:
        if self.chat:
            chunk = self._chunk()
            calls = calls or {}
            for i in sorted(pieces.keys() | calls.keys()):
                delta = chunk.choices.add(index=i).delta
                delta.SetInParent()
                if i in pieces:
                    delta.content = pieces[i]
                delta.tool_calls.extend(calls.get(i, ()))
            return provider_pb2.StreamGenerateResponse(chat_chunk=chunk)
        text = self._completion()
        for i, piece in pieces.items():
            text.choices.add(text=piece, index=i)
        return provider_pb2.StreamGenerateResponse(completion=text)

    def finish(self, reasons: dict[int, str]) -> provider_pb2.StreamGenerateResponse:
        if self.chat:
            chunk = self._chunk()
            for i, reason in sorted(reasons.items()):
                choice = chunk.choices.add(index=i, finish_reason=reason)
                # An empty delta still renders as {} downstream, as OpenAI sends it.
                choice.delta.SetInParent()
            return provider_pb2.StreamGenerateResponse(chat_chunk=chunk)
        text = self._completion()
        for i, reason in sorted(reasons.items()):
            text.choices.add(text="", index=i, finish_reason=reason)
        return provider_pb2.StreamGenerateResponse(completion=text)

    def usage_only(self, total: openai_pb2.Usage) -> provider_pb2.StreamGenerateResponse:
        if self.chat:
            chunk = self._chunk()
            chunk.usage.CopyFrom(total)
            return provider_pb2.StreamGenerateResponse(chat_chunk=chunk)
        text = self._completion()
        text.usage.CopyFrom(total)
        return provider_pb2.StreamGenerateResponse(completion=text)


async def stream_events(
    stream: AsyncIterator[types.GenerateContentResponse], reply: Reply, meter: UsageMeter
) -> AsyncGenerator[provider_pb2.StreamGenerateResponse, None]:
    """The `openai` kind's sequence: a role chunk (chat), one chunk per Gemini
    response that carries text, a finish chunk, then a usage-only chunk. The
    role chunk waits for the first text so that an upstream failure before any
    output leaves the router free to try another deployment."""
    first = True
    started = False
    finishes: dict[int, str] = {}
    streamed = gemini_tools.StreamedCalls()
    last_usage: types.GenerateContentResponseUsageMetadata | None = None
    async for response in stream:
        if first:
            raise_if_blocked(response)
            meter.set_provider_request_id(response.response_id)
            reply.model = response.model_version or reply.model
            first = False
        # Each response carries the running total so far; the last one counts.
        last_usage = response.usage_metadata or last_usage
        pieces: dict[int, str] = {}
        calls: dict[int, list[openai_pb2.ToolCallDelta]] = {}
        for c in _candidates(response):
            index = c.index or 0
            finishes.setdefault(index, "stop")
            if c.finish_reason:
                finishes[index] = finish_reason(c.finish_reason)
            text = candidate_text(c)
            if text:
                pieces[index] = text
            if reply.chat and (deltas := streamed.deltas(index, c)):
                calls[index] = deltas
        if not pieces and not calls:
            continue
        if not started and reply.chat:
            yield reply.role(sorted(finishes))
        started = True
        for piece in pieces.values():
            meter.add_output_text(piece)
        for deltas in calls.values():
            for delta in deltas:
                meter.add_output_text(delta.function.arguments)
        yield reply.delta(pieces, calls)
    finishes = {i: streamed.finish(i, r) for i, r in finishes.items()} or {0: "stop"}
    if not started and reply.chat:
        yield reply.role(sorted(finishes))
    yield reply.finish(finishes)
    total = usage(last_usage, reply.chat)
    if total is not None:
        meter.report(total)
        yield reply.usage_only(total)


# -- errors ----------------------------------------------------------------------


def _error_details(exc: genai_errors.APIError) -> list[dict[str, Any]]:
    body = exc.details if isinstance(exc.details, dict) else {}
    error = body.get("error", body)
    details = error.get("details") if isinstance(error, dict) else None
    return [d for d in details or () if isinstance(d, dict)]


def retry_after_s(exc: genai_errors.APIError) -> float | None:
    """Retry-After when the response carries one, else Google's RetryInfo."""
    headers = getattr(exc.response, "headers", None)
    value = headers.get("retry-after") if headers is not None else None
    if value is None:
        value = next(
            (
                str(d.get("retryDelay", "")).removesuffix("s")
                for d in _error_details(exc)
                if str(d.get("@type", "")).endswith("google.rpc.RetryInfo")
            ),
            None,
        )
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _bad_key(exc: genai_errors.APIError) -> bool:
    # Gemini answers an invalid key with 400 INVALID_ARGUMENT, not 401.
    return any(d.get("reason") == "API_KEY_INVALID" for d in _error_details(exc))


def map_error(exc: BaseException, provider: str, secret: str | None = None) -> SwitchboardError:
    def safe(text: object) -> str:
        clean = _GOOGLE_KEY.sub("[redacted]", redact(str(text or "")))
        return clean.replace(secret, "[redacted]") if secret else clean

    if isinstance(exc, genai_errors.APIError):
        code = exc.code or 0
        if code in (401, 403) or _bad_key(exc):
            # The upstream's words may quote part of our key: use our own.
            return SwitchboardError(
                R.ERROR_REASON_UPSTREAM_AUTH,
                f"provider {provider!r} rejected its credentials (HTTP {code})",
            )
        if code == 429:
            return SwitchboardError(
                R.ERROR_REASON_UPSTREAM_RATE_LIMITED,
                f"provider {provider!r} is rate limiting: {safe(exc.message)}",
                retry_after_s=retry_after_s(exc),
            )
        if 400 <= code < 500:
            return SwitchboardError(
                R.ERROR_REASON_UPSTREAM_INVALID_REQUEST,
                f"provider {provider!r} rejected the request: {safe(exc.message)}",
            )
        return SwitchboardError(
            R.ERROR_REASON_UPSTREAM_ERROR, f"provider {provider!r} returned HTTP {code}"
        )
    if isinstance(exc, TimeoutError | httpx2.TimeoutException):
        return SwitchboardError(
            R.ERROR_REASON_UPSTREAM_TIMEOUT, f"provider {provider!r} did not answer in time"
        )
    if isinstance(exc, aiohttp.ClientError | httpx2.TransportError | OSError):
        # Raised both for a refused connection and for one broken mid-stream.
        return SwitchboardError(
            R.ERROR_REASON_UPSTREAM_ERROR,
            f"lost the connection to provider {provider!r}: {safe(exc) or type(exc).__name__}",
        )
    return SwitchboardError(
        R.ERROR_REASON_UPSTREAM_ERROR, f"provider {provider!r} sent a response we could not read"
    )


# -- the adapter -----------------------------------------------------------------


class GeminiAdapter:
    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self._key = config.api_key()
        self._key_missing = bool(config.api_key_env) and not self._key
        self._client: genai.Client | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def client(self) -> genai.Client:
        """Built on first use, inside the event loop its aiohttp session belongs to.

        The session is ours, not the SDK's: the SDK subclasses
        aiohttp.ClientSession at run time, which aiohttp deprecates with a
        DeprecationWarning on every new session. The settings copy the SDK's.
        """
        if self._client is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), trust_env=True, read_bufsize=2**22
            )
            self._client = genai.Client(
                # Explicit, so GOOGLE_GENAI_USE_VERTEXAI in the environment cannot
                # switch the endpoint and credentials behind the config's back.
                vertexai=False,
                api_key=self._key or _NO_KEY,
                http_options=types.HttpOptions(
                    base_url=self.config.base_url or None,
                    api_version=self.config.options.get("api_version", DEFAULT_API_VERSION),
                    timeout=_ms(self.config.timeout_s),
                    retry_options=types.HttpRetryOptions(attempts=1),
                    aiohttp_client=self._session,
                ),
            )
        return self._client

    def _check_key(self) -> None:
        if self._key_missing:
            raise SwitchboardError(
                R.ERROR_REASON_UPSTREAM_AUTH,
                f"provider {self.config.name!r} has no API key: "
                f"set the environment variable {self.config.api_key_env}",
            )

    def _options(self, timeout_s: float) -> types.HttpOptions:
        return types.HttpOptions(timeout=_ms(timeout_s))

    def _error(self, exc: BaseException) -> SwitchboardError:
        return map_error(exc, self.config.name, self._key)

    async def generate(
        self, request: provider_pb2.StreamGenerateRequest, meter: UsageMeter, timeout_s: float
    ) -> AsyncGenerator[provider_pb2.StreamGenerateResponse, None]:
        self._check_key()
        chat = request.HasField("chat")
        contents, config = (
            chat_request(request.chat) if chat else completion_request(request.completion)
        )
        model = request.target.upstream_model
        reply = Reply(chat, model)
        models = self.client.aio.models
        silence_s = min(self.config.timeout_s, timeout_s)
        try:
            if not request.stream:
                config.http_options = self._options(silence_s)
                response = await models.generate_content(
                    model=model, contents=contents, config=config
                )
                yield reply.answer(response, meter)
                return
            # The SDK's timeout bounds the whole exchange (aiohttp's `total`),
            # so a stream gets the attempt's budget and the provider's
            # timeout_s bounds each wait instead, as the openai kind's does.
            config.http_options = self._options(timeout_s)
            # The request goes out on the first iteration, not on this await.
            stream = await models.generate_content_stream(
                model=model, contents=contents, config=config
            )
            responses = _read_ahead(stream, silence_s)
            try:
                async for event in stream_events(responses, reply, meter):
                    yield event
            finally:
                # Now, not when the garbage collector gets to it.
                await responses.aclose()
        except _UPSTREAM_FAILURES as exc:
            raise self._error(exc) from None

    async def embed(
        self, request: provider_pb2.CreateEmbeddingRequest, timeout_s: float
    ) -> openai_pb2.EmbeddingList:
        self._check_key()
        raw = to_python(request.params.input)
        if isinstance(raw, list) and not all(isinstance(v, str) for v in raw):
            raise _unsupported("token-id inputs", "input")
        inputs = texts(raw)
        config = types.EmbedContentConfig(
            http_options=self._options(min(self.config.timeout_s, timeout_s))
        )
        if request.params.HasField("dimensions"):
            config.output_dimensionality = request.params.dimensions
        # One Content per input: the SDK merges a list of plain strings into a
        # single Content (one vector) for its multimodal embedding models.
        contents = [types.Content(parts=[types.Part(text=t)]) for t in inputs]
        try:
            response = await self.client.aio.models.embed_content(
                model=request.target.upstream_model, contents=contents, config=config
            )
        except _UPSTREAM_FAILURES as exc:
            raise self._error(exc) from None
        out = openai_pb2.EmbeddingList(object="list", model=request.target.upstream_model)
        for i, item in enumerate(response.embeddings or ()):
            emb = out.data.add(object="embedding", index=i)
            emb.embedding.list_value.extend(item.values or ())
        reported = response.usage_metadata.prompt_token_count if response.usage_metadata else None
        # Gemini's embedding endpoints usually report no usage: estimate it.
        tokens = reported or sum(estimate_tokens(t) for t in inputs)
        out.usage.prompt_tokens = out.usage.total_tokens = tokens
        return out

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aio.aclose()
            self._client.close()
        if self._session is not None:
            await self._session.close()


async def _read_ahead(
    stream: AsyncIterator[types.GenerateContentResponse], silence_s: float
) -> AsyncGenerator[types.GenerateContentResponse, None]:
    """`stream`, read by a task of its own, failing with TimeoutError when the
    upstream is silent for `silence_s`.

    Why a task: stopping early then cancels it inside the SDK's read, so the
    SDK's generators unwind and release the HTTP response at once. Closing
    them from outside instead (aclose) stops at the outer ones; the inner
    ones (its HttpResponse and segment iterator refer to each other) wait
    for the cyclic garbage collector, and the connection stays open until then.
    """
    queue: asyncio.Queue[types.GenerateContentResponse | Exception | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for response in stream:
                queue.put_nowait(response)
        except Exception as exc:
            queue.put_nowait(exc)
        else:
            queue.put_nowait(None)

    task = asyncio.create_task(pump())
    try:
        while True:
            async with asyncio.timeout(silence_s):
                item = await queue.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        task.cancel()
        # wait(), not await: the pump's CancelledError is expected, ours is not.
        await asyncio.wait({task})


def _ms(seconds: float) -> int:
    """HttpOptions.timeout is in milliseconds."""
    return max(1, int(seconds * 1000))
