"""The `anthropic` provider kind: Anthropic's Messages API through the
official `anthropic` SDK, answering in the same OpenAI shapes (and stream
sequence) as the `openai` kind, so the router treats every kind alike.

One AsyncAnthropic client per provider, so the HTTP connection pool is
reused across calls. SDK retries are off: retrying is the router's decision.
`options: {max_tokens: N}` sets the max_tokens sent when the caller names
none (Messages requires one).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import anthropic
from anthropic._vendor.httpx_aiohttp import AiohttpTransport

from switchboard.common.v1 import openai_pb2
from switchboard.provider.v1 import provider_pb2
from switchboard_common.config import ProviderConfig
from switchboard_common.errors import R, SwitchboardError
from switchboard_provider.adapters.anthropic.errors import map_error
from switchboard_provider.adapters.anthropic.request import (
    DEFAULT_MAX_TOKENS,
    EXTRA_BODY,
    messages_request,
    unsupported,
)
from switchboard_provider.adapters.anthropic.response import chat_completion, stream_events
from switchboard_provider.adapters.base import KeyCheck
from switchboard_provider.adapters.pooled_connections import (
    ResendOnClosedConnection,
    session_factory,
)
from switchboard_provider.meter import UsageMeter

# Without a key the SDK refuses to build a client.
_NO_KEY = "no-key"


class AnthropicAdapter:
    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self._keys = KeyCheck(config)
        self._max_tokens = int(config.options.get("max_tokens", DEFAULT_MAX_TOKENS))
        self.client = anthropic.AsyncAnthropic(
            api_key=self._keys.key or _NO_KEY,
            base_url=config.base_url or None,
            max_retries=0,
            timeout=anthropic.Timeout(config.timeout_s, connect=config.connect_timeout_s),
            # The aiohttp transport, as the openai kind uses (bench/README.md),
            # with its pooled connections handled the same way.
            http_client=anthropic.DefaultAioHttpClient(
                transport=ResendOnClosedConnection(AiohttpTransport(client=session_factory()))
            ),
        )

    def _timeout(self, timeout_s: float) -> anthropic.Timeout:
        total = min(self.config.timeout_s, timeout_s)
        return anthropic.Timeout(total, connect=min(self.config.connect_timeout_s, total))

    async def generate(
        self, request: provider_pb2.StreamGenerateRequest, meter: UsageMeter, timeout_s: float
    ) -> AsyncGenerator[provider_pb2.StreamGenerateResponse, None]:
        if not request.HasField("chat"):
            # Messages has no legacy text completion endpoint.
            raise unsupported("legacy completions", "prompt")
        self._keys.check()
        body = messages_request(request.chat, request.target.upstream_model, self._max_tokens)
        extra = {name: body.pop(name) for name in EXTRA_BODY if name in body} or None
        timeout = self._timeout(timeout_s)
        try:
            if not request.stream:
                message = await self.client.messages.create(
                    **body, extra_body=extra, timeout=timeout
                )
                yield provider_pb2.StreamGenerateResponse(
                    chat_completion=chat_completion(message, meter)
                )
                return
            stream = await self.client.messages.create(
                **body, stream=True, extra_body=extra, timeout=timeout
            )
            meter.set_provider_request_id(stream.response.headers.get("request-id"))
            async with stream:
                async for event in stream_events(stream, meter):
                    yield event
        except anthropic.AnthropicError as exc:
            raise map_error(exc, self.config.name, self._keys.key) from None

    async def embed(
        self, request: provider_pb2.CreateEmbeddingRequest, timeout_s: float
    ) -> openai_pb2.EmbeddingList:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST,
            f"provider {self.config.name!r}: Anthropic has no embeddings API",
            param="model",
        )

    async def close(self) -> None:
        await self.client.close()
