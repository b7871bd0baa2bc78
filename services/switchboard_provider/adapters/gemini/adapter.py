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

Speech synthesis (speech.py) and recognition through a multimodal prompt
(transcription.py) are mixed in.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import aiohttp
from google import genai
from google.genai import types

from switchboard.common.v1 import openai_pb2
from switchboard.provider.v1 import provider_pb2
from switchboard_common.config import ProviderConfig
from switchboard_common.errors import SwitchboardError
from switchboard_common.values import texts, to_python
from switchboard_provider.adapters.base import KeyCheck
from switchboard_provider.adapters.gemini.error_mapping import UPSTREAM_FAILURES, map_error
from switchboard_provider.adapters.gemini.request_mapping import (
    chat_request,
    completion_request,
    unsupported,
)
from switchboard_provider.adapters.gemini.response_mapping import Reply, stream_events
from switchboard_provider.adapters.gemini.speech import GeminiSpeech
from switchboard_provider.adapters.gemini.streaming import ms, read_ahead
from switchboard_provider.adapters.gemini.transcription import GeminiTranscription
from switchboard_provider.meter import UsageMeter, estimate_tokens

DEFAULT_API_VERSION = "v1beta"
# The SDK refuses to build a client without a key (and would otherwise take
# GEMINI_API_KEY from the environment behind the config's back).
_NO_KEY = "no-key"


class GeminiAdapter(GeminiSpeech, GeminiTranscription):
    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self._keys = KeyCheck(config)
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
                api_key=self._keys.key or _NO_KEY,
                http_options=types.HttpOptions(
                    base_url=self.config.base_url or None,
                    api_version=self.config.options.get("api_version", DEFAULT_API_VERSION),
                    timeout=ms(self.config.timeout_s),
                    retry_options=types.HttpRetryOptions(attempts=1),
                    aiohttp_client=self._session,
                ),
            )
        return self._client

    def _options(self, timeout_s: float) -> types.HttpOptions:
        return types.HttpOptions(timeout=ms(timeout_s))

    def _error(self, exc: BaseException) -> SwitchboardError:
        return map_error(exc, self.config.name, self._keys.key)

    async def generate(
        self, request: provider_pb2.StreamGenerateRequest, meter: UsageMeter, timeout_s: float
    ) -> AsyncGenerator[provider_pb2.StreamGenerateResponse, None]:
        self._keys.check()
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
            responses = read_ahead(stream, silence_s)
            try:
                async for event in stream_events(responses, reply, meter):
                    yield event
            finally:
                # Now, not when the garbage collector gets to it.
                await responses.aclose()
        except UPSTREAM_FAILURES as exc:
            raise self._error(exc) from None

    async def embed(
        self, request: provider_pb2.CreateEmbeddingRequest, timeout_s: float
    ) -> openai_pb2.EmbeddingList:
        self._keys.check()
        raw = to_python(request.params.input)
        if isinstance(raw, list) and not all(isinstance(v, str) for v in raw):
            raise unsupported("token-id inputs", "input")
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
        except UPSTREAM_FAILURES as exc:
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
