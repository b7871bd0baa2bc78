"""RouterService's media handlers: transcriptions and translations, speech
(streamed, cached), rerank and images. Each is admitted like chat (auth,
model of the right kind, budgets, limits) and run over the deployments by the
one attempt loop (attempts.Unary, attempts.Speech), which accounts every
upstream attempt in the kind's own unit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.api import httpbody_pb2

from switchboard.common.v1 import media_pb2
from switchboard.provider.v1 import provider_pb2, provider_pb2_grpc
from switchboard.router.v1 import router_pb2
from switchboard.usage.v1 import usage_pb2
from switchboard_common.ids import uuid7
from switchboard_router.accounting import Accounting
from switchboard_router.admission import Admission
from switchboard_router.attempts import Attempts, Exchange, Speech, Unary
from switchboard_router.catalog import Candidate
from switchboard_router.media_validation import (
    transcription_from_form,
    validate_image,
    validate_rerank,
    validate_speech,
    validate_transcription,
    validate_transcription_model,
)
from switchboard_router.routing import Routing
from switchboard_router.speech_cache import SpeechCache, cache_key

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")
# Says whether speech came from Switchboard's cache ("hit") or the upstream ("miss").
CACHE_KEY = "x-switchboard-cache"


class MediaHandlers:
    """Mixed into RouterServicer, whose admission, attempts and labels it uses."""

    provider: provider_pb2_grpc.ProviderServiceAsyncStub
    attempts: Attempts
    accounting: Accounting
    routing: Routing
    speech_cache: SpeechCache
    _admit: Callable[[Context, Any, Callable[[Any], None], str], Awaitable[Admission]]
    _answer: Callable[..., Awaitable[tuple[Candidate, list[Any]]]]
    _label: Callable[[Context, Candidate], Awaitable[None]]
    _served_by: Callable[[Candidate], tuple[tuple[str, str], ...]]

    async def _unary(
        self, context: Context, admission: Admission, requested: str, exchange: Exchange[T]
    ) -> T:
        served, (response,) = await self._answer(context, admission, requested, exchange)
        await self._label(context, served)
        return response  # type: ignore[no-any-return]

    # -- speech to text --------------------------------------------------------

    async def _transcribe(
        self, form: httpbody_pb2.HttpBody | None, params: Any, context: Context, translate: bool
    ) -> httpbody_pb2.HttpBody:
        if form is not None:
            params = transcription_from_form(form.content_type, form.data)
        validate_transcription(params)
        # Admitted without the audio: the limits' token estimate is for text.
        audio = params.file
        params.ClearField("file")
        admission = await self._admit(context, params, validate_transcription_model, "asr")
        params.file = audio
        exchange = Unary(
            self.provider.CreateTranscription,
            provider_pb2.CreateTranscriptionRequest,
            params,
            {"translate": translate},
        )
        response = await self._unary(context, admission, params.model, exchange)
        body: httpbody_pb2.HttpBody = response.body
        return body

    async def CreateTranscription(
        self, request: router_pb2.CreateTranscriptionRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        form = request.form if request.HasField("form") else None
        return await self._transcribe(form, request.params, context, translate=False)

    async def CreateTranslation(
        self, request: router_pb2.CreateTranslationRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        form = request.form if request.HasField("form") else None
        return await self._transcribe(form, request.params, context, translate=True)

    # -- text to speech --------------------------------------------------------

    async def StreamSpeech(
        self, request: router_pb2.StreamSpeechRequest, context: Context
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        params = request.params
        admission = await self._admit(context, params, validate_speech, "tts")
        key = cache_key(admission.model.name, params)
        cached = await self.speech_cache.get(key)
        candidates = admission.catalog.candidates(admission.model)
        if cached is not None and candidates:
            await self._cached_speech(context, admission, params, candidates[0])
            content_type, audio = cached
            yield httpbody_pb2.HttpBody(content_type=content_type, data=audio)
            return
        exchange = Speech(self.provider, params)
        pieces: list[bytes] = []
        content_type = ""
        async for served, event in self.attempts.run(context, admission, params.model, exchange):
            if not pieces:
                await context.send_initial_metadata((*self._served_by(served), (CACHE_KEY, "miss")))
                content_type = event.audio.content_type
            pieces.append(event.audio.data)
            yield event.audio
        await self.speech_cache.put(key, content_type, b"".join(pieces))

    async def _cached_speech(
        self,
        context: Context,
        admission: Admission,
        params: media_pb2.SpeechParams,
        candidate: Candidate,
    ) -> None:
        """Account a cache hit: a record at zero cost, counted once like any other."""
        record = usage_pb2.UsageRecord(
            event_id=uuid7(),
            request_id=uuid7(),
            deployment_id=candidate.deployment_id,
            provider=candidate.provider.name,
            upstream_model=candidate.deployment.model,
            operation=usage_pb2.OPERATION_SPEECH,
            stream=True,
            status=usage_pb2.USAGE_STATUS_OK,
            characters=len(params.input),
            cached=True,
        )
        record.start_time.GetCurrentTime()
        record.end_time.CopyFrom(record.start_time)
        try:
            # No attempt reserves the request's own limits: a hit counts against them too.
            await self.routing.reserve(admission.reservations, admission.unreserved)
            self.accounting.record(record, admission, params.model, candidate)
            await self.accounting.durable(record.event_id)
        finally:
            self.accounting.settle(admission)
        await context.send_initial_metadata((*self._served_by(candidate), (CACHE_KEY, "hit")))

    # -- rerank and images -----------------------------------------------------

    async def CreateRerank(
        self, request: router_pb2.CreateRerankRequest, context: Context
    ) -> media_pb2.RerankResponse:
        params = request.params
        admission = await self._admit(context, params, validate_rerank, "rerank")
        exchange = Unary(self.provider.CreateRerank, provider_pb2.CreateRerankRequest, params)
        response = await self._unary(context, admission, params.model, exchange)
        ranked: media_pb2.RerankResponse = response.rerank
        ranked.model = params.model
        ranked.id = ranked.id or uuid7()
        if params.HasField("top_n"):
            del ranked.results[params.top_n :]
        if not params.return_documents:
            for result in ranked.results:
                result.ClearField("document")
        return ranked

    async def CreateImage(
        self, request: router_pb2.CreateImageRequest, context: Context
    ) -> media_pb2.ImagesResponse:
        params = request.params
        admission = await self._admit(context, params, validate_image, "image")
        exchange = Unary(self.provider.CreateImage, provider_pb2.CreateImageRequest, params)
        response = await self._unary(context, admission, params.model, exchange)
        return response.images  # type: ignore[no-any-return]
