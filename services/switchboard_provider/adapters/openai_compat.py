"""The `openai` provider kind: any OpenAI-compatible server (OpenAI, DashScope,
DeepSeek, vLLM, llama.cpp, Ollama), through the official `openai` SDK.

One AsyncOpenAI client per provider, so the HTTP connection pool is reused
across calls. SDK retries are off: retrying is the router's decision.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import httpx2
import openai
from google.protobuf import json_format
from openai._vendor.httpx_aiohttp import AiohttpTransport

from switchboard.common.v1 import openai_pb2
from switchboard.provider.v1 import provider_pb2
from switchboard_common.config import ProviderConfig
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.logs import redact
from switchboard_common.pseudo_stream import chunks_from_completion
from switchboard_provider import wire
from switchboard_provider.adapters import openai_responses
from switchboard_provider.adapters.base import KeyCheck
from switchboard_provider.adapters.openai_media import OpenAIMedia
from switchboard_provider.adapters.pooled_connections import (
    ResendOnClosedConnection,
    connection_error,
    session_factory,
)
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
    for name in ("prompt", "input"):
        # Token ids travel as protobuf Values, which hold doubles: send integers.
        if name in body:
            body[name] = _integral(body[name])
    return body


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


class OpenAIAdapter(OpenAIMedia):
    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self._keys = KeyCheck(config)
        self.client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=self._keys.key or _NO_KEY,
            max_retries=0,
            timeout=openai.Timeout(config.timeout_s, connect=config.connect_timeout_s),
            # The SDK's aiohttp transport: about half the CPU per call of its
            # default httpx transport (measured in bench/README.md).
            http_client=openai.DefaultAioHttpClient(
                transport=ResendOnClosedConnection(AiohttpTransport(client=session_factory()))
            ),
        )

    def _timeout(self, timeout_s: float) -> openai.Timeout:
        total = min(self.config.timeout_s, timeout_s)
        return openai.Timeout(total, connect=min(self.config.connect_timeout_s, total))

    async def generate(
        self, request: provider_pb2.StreamGenerateRequest, meter: UsageMeter, timeout_s: float
    ) -> AsyncGenerator[provider_pb2.StreamGenerateResponse, None]:
        self._keys.check()
        chat = request.HasField("chat")
        path = "/chat/completions" if chat else "/completions"
        body = _params_dict(request.chat if chat else request.completion)
        body["model"] = request.target.upstream_model
        timeout = self._timeout(timeout_s)
        # The SDK's low-level post: its client, auth, errors and SSE decoding,
        # without re-validating a body we already validated and without
        # building pydantic models we would only take apart again.
        try:
            if openai_responses.serves(self.config, request):
                async for event in openai_responses.generate(
                    self.client, self.config, request, meter, timeout
                ):
                    yield event
                return
            if not request.stream:
                response = await self.client.post(
                    path, cast_to=httpx2.Response, body=body, options={"timeout": timeout}
                )
                meter.set_provider_request_id(response.headers.get("x-request-id"))
                data = response.json()
                _raise_embedded_error(data)
                if chat:
                    answer = wire.chat_completion(data)
                    for choice in answer.choices:
                        meter.add_output_text(choice.message.content)
                    event = provider_pb2.StreamGenerateResponse(chat_completion=answer)
                else:
                    text = wire.completion(data)
                    for c in text.choices:
                        meter.add_output_text(c.text)
                    event = provider_pb2.StreamGenerateResponse(completion=text)
                if data.get("usage"):
                    meter.report(answer.usage if chat else text.usage)
                yield event
                return

            # Always ask for usage: it is how the attempt is accounted. The
            # router drops the usage chunk if the client did not ask for it.
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
            stream = await self.client.post(
                path,
                cast_to=object,
                body=body,
                options={"timeout": timeout},
                stream=True,
                stream_cls=openai.AsyncStream[object],
            )
            meter.set_provider_request_id(stream.response.headers.get("x-request-id"))
            if chat and _one_json_body(stream.response.headers.get("content-type")):
                # The upstream ignored `stream` and sent its whole answer.
                async with stream:
                    data = json.loads(await stream.response.aread())
                _raise_embedded_error(data)
                answer = wire.chat_completion(data)
                for choice in answer.choices:
                    meter.add_output_text(choice.message.content)
                if data.get("usage"):
                    meter.report(answer.usage)
                for chunk in chunks_from_completion(answer):
                    yield provider_pb2.StreamGenerateResponse(chat_chunk=chunk, pseudo_stream=True)
                return
            async with stream:
                async for item in stream:
                    if not isinstance(item, dict):
                        continue
                    if chat:
                        chunk = wire.chat_chunk(item)
                        for chunk_choice in chunk.choices:
                            meter.add_output_text(chunk_choice.delta.content)
                        if chunk.choices:
                            meter.first_token()
                        if item.get("usage"):
                            meter.report(chunk.usage)
                        yield provider_pb2.StreamGenerateResponse(chat_chunk=chunk)
                    else:
                        piece = wire.completion(item)
                        for c in piece.choices:
                            meter.add_output_text(c.text)
                        if item.get("usage"):
                            meter.report(piece.usage)
                        yield provider_pb2.StreamGenerateResponse(completion=piece)
        except openai.APIError as exc:
            raise self._map_error(exc) from None

    async def embed(
        self, request: provider_pb2.CreateEmbeddingRequest, timeout_s: float
    ) -> openai_pb2.EmbeddingList:
        self._keys.check()
        body = _params_dict(request.params)
        body["model"] = request.target.upstream_model
        timeout = self._timeout(timeout_s)
        try:
            response = await self.client.post(
                "/embeddings", cast_to=httpx2.Response, body=body, options={"timeout": timeout}
            )
        except openai.APIError as exc:
            raise self._map_error(exc) from None
        data = response.json()
        _raise_embedded_error(data)
        return json_format.ParseDict(data, openai_pb2.EmbeddingList(), ignore_unknown_fields=True)

    def _timeout_error(self) -> SwitchboardError:
        return SwitchboardError(
            R.ERROR_REASON_UPSTREAM_TIMEOUT,
            f"provider {self.config.name!r} did not answer in time",
        )

    def _map_error(self, exc: openai.APIError) -> SwitchboardError:
        name = self.config.name
        # The SDK's aiohttp transport reports every aiohttp connection error as
        # a connect timeout: a refused connection, and a kept-alive one the
        # server closed, among them. Those are lost connections, worth the
        # router's retry, not a deadline spent (a timeout is not retried).
        lost = connection_error(exc)
        if isinstance(exc, openai.APITimeoutError) and lost is None:
            return self._timeout_error()
        if isinstance(exc, openai.APIConnectionError):
            # Raised both for a refused connection and for one broken mid-stream.
            why = str(lost) if lost is not None else exc.message
            return SwitchboardError(
                R.ERROR_REASON_UPSTREAM_ERROR,
                f"lost the connection to provider {name!r}: {redact(why)}",
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


def _raise_embedded_error(data: object) -> None:
    """Some OpenAI-compatible servers answer 200 with an error object inside."""
    if isinstance(data, dict) and isinstance(data.get("error"), dict) and "choices" not in data:
        message = str(data["error"].get("message") or "unknown error")
        raise SwitchboardError(
            R.ERROR_REASON_UPSTREAM_ERROR, f"the upstream answered with an error: {redact(message)}"
        )


def _one_json_body(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == "application/json"


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
