"""ProviderService's media RPCs: transcriptions, speech, rerank and images,
each with its one UsageRecord in the kind's own unit. An adapter serves a kind
by having its method (OpenAIMedia); one without it answers NOT_IMPLEMENTED."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.api import httpbody_pb2

from switchboard.provider.v1 import provider_pb2
from switchboard.usage.v1 import usage_pb2
from switchboard_common.audio import wav_seconds
from switchboard_common.config import ProviderConfig
from switchboard_common.deadlines import remaining
from switchboard_common.errors import R, SwitchboardError
from switchboard_provider.adapters.base import Adapter
from switchboard_provider.meter import UsageMeter

Context = grpc.aio.ServicerContext[Any, Any]
MAX_ATTEMPT_S = 600.0


def _meter(request: Any, operation: int, stream: bool = False) -> UsageMeter:
    meter = UsageMeter(
        provider_pb2.StreamGenerateRequest(
            request_id=request.request_id,
            attempt=request.attempt,
            target=request.target,
            stream=stream,
        ),
        operation,
    )
    meter.report_units()
    return meter


def _method(adapter: Adapter, config: ProviderConfig, name: str, what: str) -> Any:
    method = getattr(adapter, name, None)
    if method is None:
        raise SwitchboardError(
            R.ERROR_REASON_NOT_IMPLEMENTED,
            f"provider {config.name!r} (kind {config.kind}) does not serve {what}",
        )
    return method


class MediaRpcs:
    """Mixed into ProviderServicer, which finds each target's adapter."""

    _config: Callable[[provider_pb2.Target], Awaitable[ProviderConfig]]
    adapter: Callable[[ProviderConfig], Adapter]

    async def _media(self, request: Any, name: str, what: str) -> Any:
        config = await self._config(request.target)
        return _method(self.adapter(config), config, name, what)

    async def CreateTranscription(
        self, request: provider_pb2.CreateTranscriptionRequest, context: Context
    ) -> provider_pb2.CreateTranscriptionResponse:
        transcribe = await self._media(request, "transcribe", "speech recognition")
        operation = (
            usage_pb2.OPERATION_TRANSLATION
            if request.translate
            else usage_pb2.OPERATION_TRANSCRIPTION
        )
        meter = _meter(request, operation)
        meter.record.audio_seconds = wav_seconds(request.params.file)
        data, content_type = await transcribe(request, remaining(context, MAX_ATTEMPT_S))
        return provider_pb2.CreateTranscriptionResponse(
            body=httpbody_pb2.HttpBody(content_type=content_type, data=data),
            usage=meter.finish(usage_pb2.USAGE_STATUS_OK),
        )

    async def StreamSpeech(
        self, request: provider_pb2.StreamSpeechRequest, context: Context
    ) -> AsyncIterator[provider_pb2.StreamSpeechResponse]:
        speak = await self._media(request, "speak", "speech synthesis")
        meter = _meter(request, usage_pb2.OPERATION_SPEECH, stream=True)
        meter.record.characters = len(request.params.input)
        produced = False
        pieces = speak(request, remaining(context, MAX_ATTEMPT_S))
        try:
            async for data, content_type in pieces:
                meter.first_token()
                body = httpbody_pb2.HttpBody(data=data)
                if not produced:
                    body.content_type = content_type
                produced = True
                yield provider_pb2.StreamSpeechResponse(audio=body)
        except SwitchboardError as err:
            status = usage_pb2.USAGE_STATUS_PARTIAL if produced else usage_pb2.USAGE_STATUS_ERROR
            yield provider_pb2.StreamSpeechResponse(usage=meter.finish(status, err))
            raise
        finally:
            await pieces.aclose()
        yield provider_pb2.StreamSpeechResponse(usage=meter.finish(usage_pb2.USAGE_STATUS_OK))

    async def CreateRerank(
        self, request: provider_pb2.CreateRerankRequest, context: Context
    ) -> provider_pb2.CreateRerankResponse:
        rerank = await self._media(request, "rerank", "reranking")
        meter = _meter(request, usage_pb2.OPERATION_RERANK)
        ranked, units = await rerank(request, remaining(context, MAX_ATTEMPT_S))
        meter.record.search_units = units
        meter.record.prompt_tokens = meter.record.total_tokens = ranked.usage.total_tokens
        return provider_pb2.CreateRerankResponse(
            rerank=ranked, usage=meter.finish(usage_pb2.USAGE_STATUS_OK)
        )

    async def CreateImage(
        self, request: provider_pb2.CreateImageRequest, context: Context
    ) -> provider_pb2.CreateImageResponse:
        generate = await self._media(request, "images", "image generation")
        meter = _meter(request, usage_pb2.OPERATION_IMAGE)
        images = await generate(request, remaining(context, MAX_ATTEMPT_S))
        meter.record.images = len(images.data)
        return provider_pb2.CreateImageResponse(
            images=images, usage=meter.finish(usage_pb2.USAGE_STATUS_OK)
        )
