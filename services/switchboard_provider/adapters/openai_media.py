"""The media kinds on OpenAI-compatible upstreams: transcriptions and
translations, speech (streamed), images through the official `openai` SDK;
rerank as a plain POST to `/rerank` under the base URL (the Cohere/Jina shape
vLLM and llama.cpp serve; a base URL ending in /v1 gives /v1/rerank), or the
provider option `rerank_path`."""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator
from typing import Any, Protocol

import httpx2
import openai
from google.protobuf import json_format

from switchboard.common.v1 import media_pb2
from switchboard.provider.v1 import provider_pb2
from switchboard_common.config import ProviderConfig
from switchboard_common.errors import SwitchboardError
from switchboard_common.values import to_python
from switchboard_provider.adapters.base import KeyCheck

# Cohere's unit: one query over up to 100 documents.
DOCUMENTS_PER_SEARCH_UNIT = 100


class _Host(Protocol):
    config: ProviderConfig
    client: openai.AsyncOpenAI

    _keys: KeyCheck

    def _timeout(self, timeout_s: float) -> openai.Timeout: ...
    def _map_error(self, exc: openai.APIError) -> SwitchboardError: ...


def _given(**values: Any) -> dict[str, Any]:
    """Only what the caller set: the SDK sends every argument it is given."""
    return {k: v for k, v in values.items() if v not in (None, "", [])}


class OpenAIMedia:
    """Mixed into OpenAIAdapter, whose client, key check and error mapping it uses."""

    async def transcribe(
        self: _Host, request: provider_pb2.CreateTranscriptionRequest, timeout_s: float
    ) -> tuple[bytes, str]:
        """The upstream's body in the requested format, and its content type."""
        self._keys.check()
        p = request.params
        body = _given(
            model=request.target.upstream_model,
            prompt=p.prompt,
            response_format=p.response_format,
            temperature=p.temperature if p.HasField("temperature") else None,
        )
        if not request.translate:
            body.update(
                _given(language=p.language, timestamp_granularities=list(p.timestamp_granularities))
            )
        upload = (p.filename or "audio.wav", p.file, p.file_type or "audio/wav")
        # The SDK's low-level post, as its audio resources send it (its
        # translations resource is deprecated, and warns).
        try:
            response = await self.client.post(
                "/audio/translations" if request.translate else "/audio/transcriptions",
                cast_to=httpx2.Response,
                body=body,
                files=[("file", upload)],
                options={
                    "headers": {"Content-Type": "multipart/form-data"},
                    "timeout": self._timeout(timeout_s),
                },
            )
        except openai.APIError as exc:
            raise self._map_error(exc) from None
        content_type = response.headers.get("content-type") or "application/json"
        return response.content, content_type

    async def speak(
        self: _Host, request: provider_pb2.StreamSpeechRequest, timeout_s: float
    ) -> AsyncGenerator[tuple[bytes, str], None]:
        """The audio as the upstream sends it, each piece with the content type."""
        self._keys.check()
        p = request.params
        args = _given(
            response_format=p.response_format,
            speed=p.speed if p.HasField("speed") else None,
            instructions=p.instructions,
        )
        try:
            async with self.client.audio.speech.with_streaming_response.create(
                model=request.target.upstream_model,
                input=p.input,
                voice=p.voice,
                timeout=self._timeout(timeout_s),
                **args,
            ) as response:
                content_type = response.headers.get("content-type") or "application/octet-stream"
                async for piece in response.iter_bytes():
                    if piece:
                        yield piece, content_type
        except openai.APIError as exc:
            raise self._map_error(exc) from None

    async def rerank(
        self: _Host, request: provider_pb2.CreateRerankRequest, timeout_s: float
    ) -> tuple[media_pb2.RerankResponse, int]:
        """The ranking and its search units (the upstream's count, else Cohere's rule)."""
        self._keys.check()
        p = request.params
        body: dict[str, Any] = {
            "model": request.target.upstream_model,
            "query": p.query,
            "documents": [to_python(d) for d in p.documents],
        }
        if p.HasField("top_n"):
            body["top_n"] = p.top_n
        if p.HasField("return_documents"):
            body["return_documents"] = p.return_documents
        path = self.config.options.get("rerank_path", "/rerank")
        try:
            response = await self.client.post(
                path,
                cast_to=httpx2.Response,
                body=body,
                options={"timeout": self._timeout(timeout_s)},
            )
        except openai.APIError as exc:
            raise self._map_error(exc) from None
        data = response.json()
        ranked = media_pb2.RerankResponse(
            id=str(data.get("id") or ""), model=str(data.get("model") or "")
        )
        for item in data.get("results") or []:
            result = ranked.results.add(
                index=int(item["index"]), relevance_score=float(item["relevance_score"])
            )
            document = item.get("document")
            if document is not None:
                # Jina and vLLM send {"text": ...}; some servers the bare string.
                text = document if isinstance(document, dict) else {"text": document}
                json_format.ParseDict(text, result.document)
        usage = data.get("usage") or {}
        ranked.usage.total_tokens = int(usage.get("total_tokens") or 0)
        billed = (data.get("meta") or {}).get("billed_units") or {}
        units = int(billed.get("search_units") or 0) or math.ceil(
            max(len(p.documents), 1) / DOCUMENTS_PER_SEARCH_UNIT
        )
        ranked.usage.search_units = units
        return ranked, units

    async def images(
        self: _Host, request: provider_pb2.CreateImageRequest, timeout_s: float
    ) -> media_pb2.ImagesResponse:
        self._keys.check()
        p = request.params
        args = _given(
            n=p.n if p.HasField("n") else None,
            size=p.size,
            response_format=p.response_format,
            quality=p.quality,
            style=p.style,
            user=p.user,
        )
        try:
            answer = await self.client.images.generate(
                model=request.target.upstream_model,
                prompt=p.prompt,
                timeout=self._timeout(timeout_s),
                **args,
            )
        except openai.APIError as exc:
            raise self._map_error(exc) from None
        return json_format.ParseDict(
            answer.model_dump(exclude_none=True),
            media_pb2.ImagesResponse(),
            ignore_unknown_fields=True,
        )
