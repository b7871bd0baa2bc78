"""RouterService: the handlers and the router's setup. Each handler admits
its request (admission), runs it over the deployments (attempts, which also
account for every upstream attempt) and shapes the answer: unary, typed
stream, or SSE bytes for the edge (render).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.api import httpbody_pb2

from switchboard.common.v1 import openai_pb2
from switchboard.provider.v1 import provider_pb2, provider_pb2_grpc
from switchboard.registry.v1 import registry_pb2
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard.usage.v1 import usage_pb2_grpc
from switchboard_common.channels import channel as service_channel
from switchboard_common.config import SwitchboardConfig
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.gpu_health import GpuHealthBoard, follow_gpu_health
from switchboard_common.ids import uuid7
from switchboard_common.keys import KeyTable
from switchboard_common.policy import current_caller
from switchboard_common.registry_follower import follow_registry
from switchboard_common.registry_snapshot import config_from_snapshot
from switchboard_common.server import Mounted
from switchboard_common.settings import Settings
from switchboard_common.tls import TlsFiles
from switchboard_router import native, render, vision
from switchboard_router.accounting import Accounting
from switchboard_router.admission import Admission, Gate
from switchboard_router.attempts import Attempts, Exchange, Generation, Unary
from switchboard_router.breaker import State
from switchboard_router.budgets import Budgets
from switchboard_router.catalog import Candidate, Catalog
from switchboard_router.default_models import default_model
from switchboard_router.health import HealthMonitor, suite_monitor
from switchboard_router.limits import Limiter, LocalLimiter, RedisLimiter
from switchboard_router.media import MediaHandlers
from switchboard_router.provider_link import provider_link
from switchboard_router.routing import Routing
from switchboard_router.settings import RouterSettings
from switchboard_router.speech_cache import SpeechCache
from switchboard_router.surfaces.mount import mount_surfaces, refusal
from switchboard_router.usage_reporter import UsageReporter
from switchboard_router.validation import validate_chat, validate_completion, validate_embedding

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")

SERVED_MODEL_KEY = "x-switchboard-model"
SERVED_DEPLOYMENT_KEY = "x-switchboard-deployment"
# Present when a fallback model served the call: the model the caller asked for.
FALLBACK_FROM_KEY = "x-switchboard-fallback-from"
# Present when GPU state changed the order of deployments: what and why.
ROUTE_NOTES_KEY = "x-switchboard-route-notes"
# Present ("true") when a stream call was answered by pseudo-streaming: the
# upstream's one whole answer, sent as server-sent events.
PSEUDO_STREAM_KEY = "x-switchboard-pseudo-stream"

# The provider event that carries a whole answer, or a streamed chunk, per kind.
_ANSWER_FIELDS = {"chat": "chat_completion", "completion": "completion"}
_CHUNK_FIELDS = {"chat": "chat_chunk", "completion": "completion"}

_BREAKER_STATES = {
    State.CLOSED: router_pb2.DeploymentHealth.BREAKER_STATE_CLOSED,
    State.HALF_OPEN: router_pb2.DeploymentHealth.BREAKER_STATE_HALF_OPEN,
    State.OPEN: router_pb2.DeploymentHealth.BREAKER_STATE_OPEN,
}


def _served(candidate: Candidate) -> tuple[tuple[str, str], ...]:
    served: tuple[tuple[str, str], ...] = (
        (SERVED_MODEL_KEY, candidate.model.name),
        (SERVED_DEPLOYMENT_KEY, candidate.deployment_id),
    )
    if candidate.fallback_from:
        served += ((FALLBACK_FROM_KEY, candidate.fallback_from),)
    if candidate.route_notes:
        served += ((ROUTE_NOTES_KEY, "; ".join(candidate.route_notes)),)
    if candidate.pseudo_stream:
        served += ((PSEUDO_STREAM_KEY, "true"),)
    return served


async def _label(context: Context, candidate: Candidate) -> None:
    """Say what served the call: as headers at the edge (initial metadata), and
    as trailing metadata for gRPC callers that read trailers."""
    await context.send_initial_metadata(_served(candidate))
    context.set_trailing_metadata(_served(candidate))


class RouterServicer(MediaHandlers, router_pb2_grpc.RouterServiceServicer):
    # What media.py's handlers label their answers with.
    _label = staticmethod(_label)
    _served_by = staticmethod(_served)

    def __init__(
        self,
        config: SwitchboardConfig,
        provider: provider_pb2_grpc.ProviderServiceAsyncStub,
        usage: UsageReporter,
        limiter: Limiter,
        budgets: Budgets | None = None,
        gpu_addresses: Sequence[str] = (),
        tls: TlsFiles | None = None,
        speech_cache: SpeechCache | None = None,
        settings: RouterSettings | None = None,
    ):
        self.settings = settings or RouterSettings()
        self.created = int(time.time())
        self._gpu_addresses = list(gpu_addresses)
        self._tls = tls
        self._gpu_watches: list[asyncio.Task[None]] = []
        seed = self.settings.routing_seed
        # A fixed seed makes weighted choices reproducible (tests, benchmarks).
        rng = random.Random(seed) if seed is not None else None  # noqa: S311 - not security
        self.routing = Routing(limiter, self.settings.breaker, rng=rng)
        # The registry's service settings (seed 004's config); the prober reads them.
        self.service_settings = registry_pb2.ServiceSettings()
        self.reconfigure(config, 0)
        self.provider = provider
        self.budgets = budgets or Budgets(usage.stub)
        self.instance = f"{socket.gethostname()}-{os.getpid()}"
        self.health: HealthMonitor | None = None
        self.gate = Gate(usage, self.budgets)
        self.usage = usage
        self.accounting = Accounting(
            usage, limiter, self.budgets, self.instance, self.settings.usage_durable_wait_s
        )
        self.attempts = Attempts(self.routing, self.accounting, self.settings.max_attempts)
        self.speech_cache = speech_cache or SpeechCache(None, self.settings.tts_cache_ttl_s)

    def reconfigure(self, config: SwitchboardConfig, version: int) -> None:
        """Serve from a new registry snapshot; calls in flight keep the old one."""
        catalog = Catalog(config, created=self.created, version=version)
        self.catalog = catalog
        self.routing.forget(catalog)
        balancing = config.load_balancing
        self.routing.tune(
            balancing.failure_threshold if balancing else None,
            balancing.recovery_threshold if balancing else None,
        )
        bound = any(d.gpu_node for m in config.models for d in m.deployments)
        if bound and self.routing.gpu is None and self._gpu_addresses:
            # Only once a deployment is bound to a GPU: a stack without GPUs
            # should not keep dialling gpu services.
            self.routing.gpu = GpuHealthBoard(saturated_percent=self.settings.gpu_saturated_percent)
            self._gpu_watches = [
                asyncio.get_running_loop().create_task(follow_gpu_health(address, self.routing.gpu))
                for address in self._gpu_addresses
            ]

    async def close(self) -> None:
        for watch in self._gpu_watches:
            watch.cancel()
        for watch in self._gpu_watches:
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        await self.budgets.close()
        await self.speech_cache.close()

    async def settled(self) -> None:
        """Before the limit store closes: no settlement is left in flight."""
        await self.accounting.settled()

    async def _admit(
        self, context: Context, params: Any, validate: Callable[[Any], None], kind: str
    ) -> Admission:
        if not params.model:
            # A call that names no model goes to the default for its use.
            params.model = default_model(self.catalog, context, kind)
        return await self.gate.admit(self.catalog, current_caller().key, params, validate, kind)

    async def _answer(
        self, context: Context, admission: Admission, requested: str, exchange: Exchange[T]
    ) -> tuple[Candidate, list[T]]:
        """The deployment that answered and every item of its answer, once the
        attempt is over (its usage record durable). Callers send the response
        metadata only once nothing else can fail: an error after it travels in
        trailers, where the edge cannot turn it into an HTTP status."""
        served: Candidate | None = None
        items: list[T] = []
        async for candidate, item in self.attempts.run(context, admission, requested, exchange):
            served = candidate
            items.append(item)
        if served is None:
            raise SwitchboardError(R.ERROR_REASON_UPSTREAM_ERROR, "the upstream sent no answer")
        return served, items

    # -- chat --------------------------------------------------------------

    async def CreateChatCompletion(
        self, request: router_pb2.CreateChatCompletionRequest, context: Context
    ) -> openai_pb2.ChatCompletion:
        params = request.params
        admission = await self._admit(context, params, validate_chat, "chat")
        served, answer = await self._complete_chat(context, admission, params)
        await _label(context, served)
        return answer

    async def _complete_chat(
        self,
        context: Context,
        admission: Admission,
        params: openai_pb2.ChatCompletionParams,
    ) -> tuple[Candidate, openai_pb2.ChatCompletion]:
        served, answer = await self._complete(context, admission, params, "chat")
        assert isinstance(answer, openai_pb2.ChatCompletion)
        return served, answer

    async def _complete(
        self, context: Context, admission: Admission, params: Any, kind: str
    ) -> tuple[Candidate, Any]:
        """The deployment that answered, and its one answer object (kind "chat" or
        "completion")."""
        offered = native.current()
        exchange = Generation(self.provider, kind, params, stream=False, native=offered)
        served, events = await self._answer(context, admission, params.model, exchange)
        event_field = _ANSWER_FIELDS[kind]
        answers = [e for e in events if e.WhichOneof("event") == event_field]
        if not answers:
            raise SwitchboardError(R.ERROR_REASON_UPSTREAM_ERROR, "the upstream sent no answer")
        if offered is not None and answers[-1].native:
            offered.answers.append(answers[-1].native)
        result = getattr(answers[-1], event_field)
        result.model = params.model
        return served, result

    # -- vision --------------------------------------------------------------

    async def CreateVisionCompletion(
        self, request: router_pb2.CreateVisionCompletionRequest, context: Context
    ) -> router_pb2.CreateVisionCompletionResponse:
        picture = vision.read_request(request)
        name = picture.model or self.catalog.default_vision_model()
        params = vision.chat_params(name, picture)
        admission = await self._admit(context, params, validate_chat, "chat")
        if "vision" not in admission.model.capabilities:
            raise SwitchboardError(
                R.ERROR_REASON_INVALID_REQUEST,
                f"The model '{name}' does not accept images (no 'vision' capability).",
                param="model",
            )
        served, answer = await self._complete_chat(context, admission, params)
        content = answer.choices[0].message.content if answer.choices else ""
        objects = vision.objects_from(content)
        await _label(context, served)
        return router_pb2.CreateVisionCompletionResponse(
            recognition_id=uuid7(), objects=objects, model=name
        )

    async def _chunks(
        self, params: Any, context: Context, kind: str
    ) -> AsyncIterator[tuple[Candidate, Any]]:
        """Admit, then the upstream's chunks (kind "chat" or "completion"), without
        the usage-only chunk unless the client asked for it."""
        validate = validate_chat if kind == "chat" else validate_completion
        admission = await self._admit(context, params, validate, "chat")
        include_usage = params.stream_options.include_usage
        offered = native.current()
        exchange = Generation(self.provider, kind, params, stream=True, native=offered)
        event_field = _CHUNK_FIELDS[kind]
        events = self.attempts.run(context, admission, params.model, exchange)
        async for candidate, event in events:
            if event.WhichOneof("event") != event_field:
                continue
            if offered is not None and event.native:
                offered.answers.append(event.native)
            if event.pseudo_stream:
                candidate = dataclasses.replace(candidate, pseudo_stream=True)
            chunk = getattr(event, event_field)
            if render.is_usage_only(chunk) and not include_usage:
                continue
            yield candidate, chunk

    async def _typed_chunks(self, params: Any, context: Context, kind: str) -> AsyncIterator[Any]:
        """Chunks for gRPC callers: served-by metadata first, the client's model name."""
        include_usage = params.stream_options.include_usage
        started = False
        async for candidate, chunk in self._chunks(params, context, kind):
            if not started:
                await _label(context, candidate)
                started = True
            chunk.model = params.model
            if not include_usage:
                chunk.ClearField("usage")
            yield chunk

    async def _sse(
        self, params: Any, context: Context, kind: str
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        """Chunks as OpenAI server-sent events, for the edge."""
        include_usage = params.stream_options.include_usage
        to_json = render.chat_chunk if kind == "chat" else render.completion_chunk
        chunks = (
            (c, to_json(chunk, params.model, include_usage))
            async for c, chunk in self._chunks(params, context, kind)
        )
        async for body in render.sse_bodies(chunks, lambda c: _label(context, c)):
            yield body

    async def StreamChatCompletion(
        self, request: router_pb2.StreamChatCompletionRequest, context: Context
    ) -> AsyncIterator[router_pb2.StreamChatCompletionResponse]:
        async for chunk in self._typed_chunks(request.params, context, "chat"):
            yield router_pb2.StreamChatCompletionResponse(chunk=chunk)

    async def StreamChatCompletionSse(
        self, request: router_pb2.StreamChatCompletionSseRequest, context: Context
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        async for body in self._sse(request.params, context, "chat"):
            yield body

    # -- legacy completions --------------------------------------------------

    async def CreateCompletion(
        self, request: router_pb2.CreateCompletionRequest, context: Context
    ) -> openai_pb2.Completion:
        params = request.params
        admission = await self._admit(context, params, validate_completion, "chat")
        served, answer = await self._complete(context, admission, params, "completion")
        await _label(context, served)
        assert isinstance(answer, openai_pb2.Completion)
        return answer

    async def StreamCompletion(
        self, request: router_pb2.StreamCompletionRequest, context: Context
    ) -> AsyncIterator[router_pb2.StreamCompletionResponse]:
        async for chunk in self._typed_chunks(request.params, context, "completion"):
            yield router_pb2.StreamCompletionResponse(chunk=chunk)

    async def StreamCompletionSse(
        self, request: router_pb2.StreamCompletionSseRequest, context: Context
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        async for body in self._sse(request.params, context, "completion"):
            yield body

    # -- embeddings ----------------------------------------------------------

    async def CreateEmbedding(
        self, request: router_pb2.CreateEmbeddingRequest, context: Context
    ) -> openai_pb2.EmbeddingList:
        params = request.params
        admission = await self._admit(context, params, validate_embedding, "embedding")
        exchange = Unary(self.provider.CreateEmbedding, provider_pb2.CreateEmbeddingRequest, params)
        served, (response,) = await self._answer(context, admission, params.model, exchange)
        embeddings: openai_pb2.EmbeddingList = response.embeddings
        embeddings.model = params.model
        await _label(context, served)
        return embeddings

    # -- models and health ---------------------------------------------------

    async def ListModels(
        self, request: router_pb2.ListModelsRequest, context: Context
    ) -> router_pb2.ListModelsResponse:
        key = current_caller().key
        return router_pb2.ListModelsResponse(object="list", data=self.catalog.visible(key))

    async def GetModel(
        self, request: router_pb2.GetModelRequest, context: Context
    ) -> openai_pb2.Model:
        key = current_caller().key
        model = self.catalog.resolve(request.model, key)
        return self.catalog.describe(model, details=True)

    async def GetHealth(
        self, request: router_pb2.GetHealthRequest, context: Context
    ) -> router_pb2.GetHealthResponse:
        assert self.health is not None, "setup attaches the health monitor"
        return await self.health.answer(context)

    async def GetRoutingHealth(
        self, request: router_pb2.GetRoutingHealthRequest, context: Context
    ) -> router_pb2.GetRoutingHealthResponse:
        catalog = self.catalog
        response = router_pb2.GetRoutingHealthResponse(
            instance=self.instance, config_version=catalog.version
        )
        for health in self.routing.health(catalog):
            entry = response.deployments.add(
                deployment_id=health.candidate.deployment_id,
                model=health.candidate.model.name,
                provider=health.candidate.provider.name,
                breaker=_BREAKER_STATES[health.state],
                outstanding=health.outstanding,
            )
            if health.latency_s is not None:
                entry.latency_ms = health.latency_s * 1000
            if health.ttft_s is not None:
                entry.ttft_ms = health.ttft_s * 1000
        return response


async def setup(server: grpc.aio.Server, settings: Settings) -> Mounted:
    # Read once, here: a bad value fails the start, naming the variable.
    own = RouterSettings.from_env()
    provider = provider_link(own.provider_placement, settings)
    usage_channel = service_channel(settings.address("usage"), settings.tls)
    reporter = UsageReporter(
        usage_pb2_grpc.UsageLedgerServiceStub(usage_channel),
        max_pending=own.usage_buffer,
    )
    reporter.start()
    limiter: Limiter = (
        RedisLimiter(
            settings.redis_url,
            fail_open=own.limits_fail_open,
        )
        if settings.redis_url
        else LocalLimiter()
    )
    gpu_addresses = list(own.gpu_addresses or (settings.address("gpu"),))
    # Until the registry answers, no model exists and every key is refused.
    servicer = RouterServicer(
        SwitchboardConfig(keys=[]),
        provider.stub,
        reporter,
        limiter,
        gpu_addresses=gpu_addresses,
        tls=settings.tls,
        speech_cache=SpeechCache(settings.redis_url, own.tts_cache_ttl_s),
        settings=own,
    )
    keys = KeyTable()

    def apply(snapshot: registry_pb2.Snapshot) -> None:
        config = config_from_snapshot(snapshot)
        servicer.reconfigure(config, snapshot.version)
        if provider.reconfigure is not None:
            provider.reconfigure(config, snapshot.version)
        servicer.service_settings = snapshot.service_settings
        keys.replace(config)

    follower = await follow_registry(settings, apply)
    health = suite_monitor(
        settings, provider.channel, usage_channel, reporter, follower, gpu_addresses
    )
    servicer.health = health
    health.start()
    router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, server)
    name = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
    surfaces, close_surfaces = mount_surfaces(servicer, server, settings)

    async def close_reporter() -> None:
        await reporter.close(flush_s=5.0)

    # One closer a step, in order: serve() runs each even when one before it
    # failed, so a failure cannot leave the Redis pool or a channel open.
    return Mounted(
        [name, *surfaces],
        [
            health.close,
            follower.close,
            close_surfaces,
            servicer.close,
            close_reporter,
            servicer.settled,
            limiter.close,
            usage_channel.close,
            provider.close,
        ],
        keys=keys,
        ready=health.ready,
        refusal=refusal,
    )
