"""The `openai` provider kind: any OpenAI-compatible server (OpenAI, DashScope,
DeepSeek, vLLM, llama.cpp, Ollama), through the official `openai` SDK.

One AsyncOpenAI client per provider, so the HTTP connection pool is reused
across calls. SDK retries are off: retrying is the router's decision.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import openai
from google.protobuf import json_format

from switchboard.common.v1 import openai_pb2
from switchboard.provider.v1 import provider_pb2
from switchboard_common.config import ProviderConfig
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.logs import redact
from switchboard_provider.meter import UsageMeter

# Without a key the SDK refuses to build a client; self-hosted servers ignore it.
_NO_KEY = "no-key"
_INT64_FIELDS = ("seed",)


def _params_dict(params: Any) -> dict[str, Any]:
    body: dict[str, Any] = json_format.MessageToDict(params, preserving_proto_field_name=True)
    for name in _INT64_FIELDS:  # proto3 JSON renders int64 as a string
        if name in body:
            body[name] = int(body[name])
    for name in ("stream", "stream_options", "model"):
        body.pop(name, None)
    return body


def _split_known(create: Callable[..., Any], body: dict[str, Any]) -> dict[str, Any]:
    """SDK keyword arguments for what this SDK version knows; extra_body for the rest."""
    known = set(inspect.signature(create).parameters)
    kwargs = {k: v for k, v in body.items() if k in known}
    extra = {k: v for k, v in body.items() if k not in known}
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


class OpenAIAdapter:
    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self._key_missing = bool(config.api_key_env) and not config.api_key()
        self.client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=config.api_key() or _NO_KEY,
            max_retries=0,
            timeout=openai.Timeout(config.timeout_s, connect=config.connect_timeout_s),
        )

    def _timeout(self, timeout_s: float) -> openai.Timeout:
        total = min(self.config.timeout_s, timeout_s)
        return openai.Timeout(total, connect=min(self.config.connect_timeout_s, total))

    def _check_key(self) -> None:
        if self._key_missing:
            raise SwitchboardError(
                R.ERROR_REASON_UPSTREAM_AUTH,
                f"provider {self.config.name!r} has no API key: "
                f"set the environment variable {self.config.api_key_env}",
            )

    async def generate(
        self, request: provider_pb2.StreamGenerateRequest, meter: UsageMeter, timeout_s: float
    ) -> AsyncIterator[provider_pb2.StreamGenerateResponse]:
        self._check_key()
        chat = request.HasField("chat")
        api = self.client.chat.completions if chat else self.client.completions
        body = _params_dict(request.chat if chat else request.completion)
        kwargs = _split_known(api.create, body)
        kwargs["model"] = request.target.upstream_model
        kwargs["timeout"] = self._timeout(timeout_s)
        try:
            if not request.stream:
                raw = await api.with_raw_response.create(**kwargs)
                meter.set_provider_request_id(raw.headers.get("x-request-id"))
                result = raw.parse()
                data = result.model_dump(mode="json", exclude_none=True)
                if chat:
                    completion = json_format.ParseDict(
                        data, openai_pb2.ChatCompletion(), ignore_unknown_fields=True
                    )
                    for choice in completion.choices:
                        meter.add_output_text(choice.message.content)
                    event = provider_pb2.StreamGenerateResponse(chat_completion=completion)
                else:
                    text_completion = json_format.ParseDict(
                        data, openai_pb2.Completion(), ignore_unknown_fields=True
                    )
                    for c in text_completion.choices:
                        meter.add_output_text(c.text)
                    event = provider_pb2.StreamGenerateResponse(completion=text_completion)
                usage = event.chat_completion.usage if chat else event.completion.usage
                if data.get("usage"):
                    meter.report(usage)
                yield event
                return

            # Always ask for usage: it is how the attempt is accounted. The
            # router drops the usage chunk if the client did not ask for it.
            kwargs["stream"] = True
            kwargs["stream_options"] = {"include_usage": True}
            raw_stream = await api.with_raw_response.create(**kwargs)
            meter.set_provider_request_id(raw_stream.headers.get("x-request-id"))
            stream = raw_stream.parse()
            async with stream:
                async for item in stream:
                    data = item.model_dump(mode="json", exclude_none=True)
                    if chat:
                        chunk = json_format.ParseDict(
                            data, openai_pb2.ChatCompletionChunk(), ignore_unknown_fields=True
                        )
                        for chunk_choice in chunk.choices:
                            meter.add_output_text(chunk_choice.delta.content)
                        if chunk.choices:
                            meter.first_token()
                        if data.get("usage"):
                            meter.report(chunk.usage)
                        yield provider_pb2.StreamGenerateResponse(chat_chunk=chunk)
                    else:
                        piece = json_format.ParseDict(
                            data, openai_pb2.Completion(), ignore_unknown_fields=True
                        )
                        for c in piece.choices:
                            meter.add_output_text(c.text)
                        if data.get("usage"):
                            meter.report(piece.usage)
                        yield provider_pb2.StreamGenerateResponse(completion=piece)
        except openai.APIError as exc:
            raise self._map_error(exc) from None

    async def embed(
        self, request: provider_pb2.CreateEmbeddingRequest, timeout_s: float
    ) -> openai_pb2.EmbeddingList:
        self._check_key()
        body = _params_dict(request.params)
        kwargs = _split_known(self.client.embeddings.create, body)
        kwargs["model"] = request.target.upstream_model
        kwargs["timeout"] = self._timeout(timeout_s)
        try:
            raw = await self.client.embeddings.with_raw_response.create(**kwargs)
        except openai.APIError as exc:
            raise self._map_error(exc) from None
        data = raw.parse().model_dump(mode="json", exclude_none=True)
        return json_format.ParseDict(data, openai_pb2.EmbeddingList(), ignore_unknown_fields=True)

    def _timeout_error(self) -> SwitchboardError:
        return SwitchboardError(
            R.ERROR_REASON_UPSTREAM_TIMEOUT,
            f"provider {self.config.name!r} did not answer in time",
        )

    def _map_error(self, exc: openai.APIError) -> SwitchboardError:
        name = self.config.name
        if isinstance(exc, openai.APITimeoutError):
            return self._timeout_error()
        if isinstance(exc, openai.APIConnectionError):
            # Raised both for a refused connection and for one broken mid-stream.
            return SwitchboardError(
                R.ERROR_REASON_UPSTREAM_ERROR,
                f"lost the connection to provider {name!r}: {redact(exc.message)}",
            )
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            if status in (401, 403):
                # The upstream's words may quote part of our key: use our own.
                return SwitchboardError(
                    R.ERROR_REASON_UPSTREAM_AUTH,
                    f"provider {name!r} rejected its credentials (HTTP {status})",
                )
            if status == 429:
                return SwitchboardError(
                    R.ERROR_REASON_UPSTREAM_RATE_LIMITED,
                    f"provider {name!r} is rate limiting: {redact(exc.message)}",
                    retry_after_s=_retry_after(exc.response.headers.get("retry-after")),
                )
            if 400 <= status < 500:
                return SwitchboardError(
                    R.ERROR_REASON_UPSTREAM_INVALID_REQUEST,
                    f"provider {name!r} rejected the request: {redact(exc.message)}",
                )
            return SwitchboardError(
                R.ERROR_REASON_UPSTREAM_ERROR, f"provider {name!r} returned HTTP {status}"
            )
        return SwitchboardError(
            R.ERROR_REASON_UPSTREAM_ERROR, f"provider {name!r} failed: {redact(exc.message)}"
        )

    async def close(self) -> None:
        await self.client.close()


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
