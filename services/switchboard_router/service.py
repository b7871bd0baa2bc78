"""RouterService: admission (auth, validation, model resolution), attempts over
deployments and fallbacks, and the three response shapes (unary, typed stream,
SSE bytes for the edge).

Retries happen only before the first byte reaches the client: once a chunk is
out, a failure ends the stream with an error (an SSE error event at the edge,
a non-OK status for gRPC callers), never a silent truncation.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.api import httpbody_pb2

from switchboard.common.v1 import openai_pb2
from switchboard.provider.v1 import provider_pb2, provider_pb2_grpc
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard.usage.v1 import usage_pb2, usage_pb2_grpc
from switchboard_common.channels import channel as service_channel
from switchboard_common.config import KeyConfig, ModelConfig, SwitchboardConfig
from switchboard_common.credentials import require_admin
from switchboard_common.deadlines import remaining
from switchboard_common.errors import R, SwitchboardError, from_rpc_error
from switchboard_common.gpu_health import (
    DEFAULT_SATURATED_PERCENT,
    GpuHealthBoard,
    follow_gpu_health,
)
from switchboard_common.ids import uuid7
from switchboard_common.interceptors import REQUEST_ID_KEY
from switchboard_common.logs import log_fields, request_id_var
from switchboard_common.registry_follower import follow_registry
from switchboard_common.registry_snapshot import config_from_snapshot
from switchboard_common.server import Mounted
from switchboard_common.settings import Settings
from switchboard_common.tls import TlsFiles
from switchboard_router import render, vision
from switchboard_router.auth import Authenticator
from switchboard_router.backoff import fits, retry_delay
from switchboard_router.breaker import State
from switchboard_router.budgets import Budgets, Hold
from switchboard_router.catalog import Candidate, Catalog
from switchboard_router.defaults import apply_defaults
from switchboard_router.limits import (
    Limiter,
    LocalLimiter,
    RedisLimiter,
    Reservation,
    estimate_tokens,
)
from switchboard_router.routing import FAILOVER, RETRY_AGAIN, Routing, breaker_config_from_env
from switchboard_router.surfaces import surface
from switchboard_router.surfaces.mount import mount_surfaces
from switchboard_router.usage_reporter import UsageReporter
from switchboard_router.validation import validate_chat, validate_completion, validate_embedding

log = logging.getLogger(__name__)
usage_log = logging.getLogger("switchboard.usage")
Context = grpc.aio.ServicerContext[Any, Any]

VERSION = "0.1.0"
MAX_CALL_S = 600.0
# The longest a reply waits for its usage record to be durable while the usage
# service is up (it normally takes a millisecond or two: a group-committed fsync).
DURABLE_WAIT_S = float(os.environ.get("SWITCHBOARD_USAGE_DURABLE_WAIT_S") or 1.0)
MAX_ATTEMPTS = int(os.environ.get("SWITCHBOARD_MAX_ATTEMPTS") or 3)
T = TypeVar("T")
SERVED_MODEL_KEY = "x-switchboard-model"
SERVED_DEPLOYMENT_KEY = "x-switchboard-deployment"
# Present when a fallback model served the call: the model the caller asked for.
FALLBACK_FROM_KEY = "x-switchboard-fallback-from"
# Present when GPU state changed the order of deployments: what and why.
ROUTE_NOTES_KEY = "x-switchboard-route-notes"

# The provider event that carries a whole answer, or a streamed chunk, per kind.
_ANSWER_FIELDS = {"chat": "chat_completion", "completion": "completion"}
_CHUNK_FIELDS = {"chat": "chat_chunk", "completion": "completion"}

BuildRequest = Callable[[Candidate, int], provider_pb2.StreamGenerateRequest]


_BREAKER_STATES = {
    State.CLOSED: router_pb2.DeploymentHealth.BREAKER_STATE_CLOSED,
    State.HALF_OPEN: router_pb2.DeploymentHealth.BREAKER_STATE_HALF_OPEN,
    State.OPEN: router_pb2.DeploymentHealth.BREAKER_STATE_OPEN,
}


def _target(candidate: Candidate) -> provider_pb2.Target:
    return provider_pb2.Target(
        provider=candidate.provider.name,
        upstream_model=candidate.deployment.model,
        deployment_id=candidate.deployment_id,
        config_version=candidate.version,
    )


def _served(candidate: Candidate) -> tuple[tuple[str, str], ...]:
    served: tuple[tuple[str, str], ...] = (
        (SERVED_MODEL_KEY, candidate.model.name),
        (SERVED_DEPLOYMENT_KEY, candidate.deployment_id),
    )
    if candidate.fallback_from:
        served += ((FALLBACK_FROM_KEY, candidate.fallback_from),)
    if candidate.route_notes:
        served += ((ROUTE_NOTES_KEY, "; ".join(candidate.route_notes)),)
    return served


async def _label(context: Context, candidate: Candidate) -> None:
    """Say what served the call: as headers at the edge (initial metadata), and
    as trailing metadata for gRPC callers that read trailers."""
    await context.send_initial_metadata(_served(candidate))
    context.set_trailing_metadata(_served(candidate))


@dataclass
class Admission:
    """A request let in: who, which model, what it reserved against the limits,
    and the tokens its upstream attempts used (to settle those reservations)."""

    key: KeyConfig | None
    model: ModelConfig
    # The catalog it was admitted under; usage records carry its registry version.
    catalog: Catalog
    # Tokens reserved against TPM limits: the estimated prompt plus max_tokens.
    estimate: int = 0
    reservations: list[Reservation] = field(default_factory=list)
    tokens: int = 0
    # Worst-case cost held against the key's and model's budgets.
    hold: Hold | None = None


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(
        self,
        config: SwitchboardConfig,
        provider: provider_pb2_grpc.ProviderServiceAsyncStub,
        usage: UsageReporter,
        limiter: Limiter,
        admin_key: str | None = None,
        budgets: Budgets | None = None,
        gpu_addresses: Sequence[str] = (),
        tls: TlsFiles | None = None,
    ):
        self.created = int(time.time())
        self._gpu_addresses = list(gpu_addresses)
        self._tls = tls
        self._gpu_watches: list[asyncio.Task[None]] = []
        seed = os.environ.get("SWITCHBOARD_ROUTING_SEED")
        # A fixed seed makes weighted choices reproducible (tests, benchmarks).
        rng = random.Random(int(seed)) if seed else None  # noqa: S311 - not security
        self.routing = Routing(limiter, breaker_config_from_env(), rng=rng)
        self.reconfigure(config, 0)
        self.provider = provider
        self.usage = usage
        self.limiter = limiter
        self.admin_key = admin_key
        self.budgets = budgets or Budgets(usage.stub)
        self.max_attempts = MAX_ATTEMPTS
        self._rng = random.Random()  # noqa: S311 - retry jitter
        self._background: set[asyncio.Task[None]] = set()
        self.instance = f"{socket.gethostname()}-{os.getpid()}"
        self._sequence = itertools.count(1)

    def reconfigure(self, config: SwitchboardConfig, version: int) -> None:
        """Serve from a new registry snapshot; calls in flight keep the old one."""
        catalog = Catalog(config, created=self.created, version=version)
        auth = Authenticator(config)
        self.catalog, self.auth = catalog, auth
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
            self.routing.gpu = GpuHealthBoard(
                saturated_percent=float(
                    os.environ.get("SWITCHBOARD_GPU_SATURATED_PERCENT") or DEFAULT_SATURATED_PERCENT
                )
            )
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

    # -- admission ---------------------------------------------------------

    async def _admit(
        self, context: Context, params: Any, validate: Callable[[Any], None], kind: str
    ) -> Admission:
        """Auth first (401 before 400), then the body, then the model (404/403),
        then the rate limits (429)."""
        catalog, auth = self.catalog, self.auth
        key = auth.authenticate(context.invocation_metadata() or ())
        if self.usage.full:
            raise SwitchboardError(
                R.ERROR_REASON_SERVICE_UNAVAILABLE,
                "usage accounting is unavailable; refusing requests that could not be counted",
            )
        validate(params)
        model = catalog.resolve(params.model, key, kind)
        apply_defaults(model, params)
        admission = Admission(key, model, catalog, estimate_tokens(params))
        admission.hold = await self.budgets.admit(key, admission.model, admission.estimate)
        try:
            await self._reserve(admission, admission.estimate)
        except SwitchboardError:
            self.budgets.release(admission.hold)
            raise
        return admission

    async def _reserve(self, admission: Admission, tokens: int) -> None:
        key, model = admission.key, admission.model
        scopes: list[tuple[str, int | None, int]] = [
            (f"rpm:model {model.name}", model.rpm, 1),
            (f"tpm:model {model.name}", model.tpm, tokens),
        ]
        if key is not None:
            scopes[:0] = [
                (f"rpm:key {key.name}", key.rpm, 1),
                (f"tpm:key {key.name}", key.tpm, tokens),
            ]
        try:
            for name, limit, cost in scopes:
                if limit:
                    admission.reservations.append(await self.limiter.acquire(name, limit, cost))
        except SwitchboardError:
            # Refused somewhere: give back what was already reserved.
            for reservation in admission.reservations:
                await self.limiter.settle(reservation, 0)
            raise

    async def settled(self) -> None:
        """Wait (briefly) for background settlements, before the store closes."""
        if self._background:
            await asyncio.wait(self._background, timeout=2.0)

    def _settle(self, admission: Admission) -> None:
        """Replace token estimates with what the attempts used (in the background:
        the response must not wait on the limit store)."""
        self.budgets.release(admission.hold)
        for reservation in admission.reservations:
            if reservation.scope.startswith("tpm:"):
                task = asyncio.create_task(self.limiter.settle(reservation, admission.tokens))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    # -- attempts ----------------------------------------------------------

    async def _generate(
        self,
        context: Context,
        admission: Admission,
        requested: str,
        build: BuildRequest,
        stream: bool,
    ) -> AsyncIterator[tuple[Candidate, provider_pb2.StreamGenerateResponse]]:
        def run(
            candidate: Candidate, attempt: int
        ) -> AsyncGenerator[tuple[Candidate, provider_pb2.StreamGenerateResponse], None]:
            return self._attempt(context, admission, requested, build, candidate, attempt)

        try:
            async for item in self._attempts(context, admission, requested, stream, run):
                yield item
        finally:
            self._settle(admission)

    def _plan(self, admission: Admission, requested: str, stream: bool) -> list[Candidate]:
        plan, notes = self.routing.plan(admission.catalog, admission.model, stream)
        if not plan:
            why = f" ({'; '.join(notes)})" if notes else ""
            raise SwitchboardError(
                R.ERROR_REASON_NO_HEALTHY_DEPLOYMENT,
                f"The model '{requested}' has no deployment that can serve it right now{why}.",
            )
        return plan

    async def _attempts(
        self,
        context: Context,
        admission: Admission,
        requested: str,
        stream: bool,
        run: Callable[[Candidate, int], AsyncGenerator[tuple[Candidate, T], None]],
    ) -> AsyncIterator[tuple[Candidate, T]]:
        """Try the plan in order, each deployment its breaker and limits admit,
        at most max_attempts in all. When a pass over the plan ends in an error
        worth retrying, pass again after a jittered backoff that honours the
        upstream's Retry-After, if the caller's deadline leaves room."""
        plan = self._plan(admission, requested, stream)
        tried = 0
        last: SwitchboardError | None = None
        refused: SwitchboardError | None = None
        for round_ in itertools.count():
            if round_:
                if last is None or last.reason not in RETRY_AGAIN or tried >= self.max_attempts:
                    break
                delay = retry_delay(round_, retry_after_s=last.retry_after_s, rng=self._rng)
                if not fits(delay, context.time_remaining()):
                    break
                await asyncio.sleep(delay)
            tried_before = tried
            for candidate in plan:
                if tried >= self.max_attempts:
                    break
                refusal = await self.routing.acquire(
                    candidate, admission.estimate, admission.reservations
                )
                if refusal is not None:
                    refused = refusal
                    continue
                attempt, tried = tried, tried + 1
                started = False
                try:
                    async with contextlib.aclosing(run(candidate, attempt)) as events:
                        async for item in events:
                            started = True
                            yield item
                    return
                except SwitchboardError as err:
                    if started or err.reason not in FAILOVER:
                        raise
                    last = err
                    log.info(
                        "attempt failed; trying the next deployment",
                        extra=log_fields(
                            attempt=attempt,
                            deployment=candidate.deployment_id,
                            reason=err.reason_name,
                        ),
                    )
            if tried == tried_before:
                break
        if last is not None:
            raise last
        if refused is not None and refused.reason != R.ERROR_REASON_NO_HEALTHY_DEPLOYMENT:
            raise refused
        raise SwitchboardError(
            R.ERROR_REASON_NO_HEALTHY_DEPLOYMENT,
            f"The model '{requested}' has no healthy deployment right now: each one is "
            "cooling down after repeated upstream failures. Retry shortly.",
        )

    async def _attempt(
        self,
        context: Context,
        admission: Admission,
        requested: str,
        build: BuildRequest,
        candidate: Candidate,
        attempt: int,
    ) -> AsyncGenerator[tuple[Candidate, provider_pb2.StreamGenerateResponse], None]:
        """One upstream attempt; its usage record is accounted whatever happens."""
        request = build(candidate, attempt)
        started_at = self.routing.started(candidate)
        first_byte_at: float | None = None
        failure: SwitchboardError | None = SwitchboardError(
            R.ERROR_REASON_CANCELLED, "the caller went away"
        )
        call = self.provider.StreamGenerate(
            request,
            timeout=remaining(context, MAX_CALL_S),
            metadata=((REQUEST_ID_KEY, request.request_id),),
        )
        accounted = ""
        try:
            async for event in call:
                if event.HasField("usage"):
                    self._account(event.usage, admission, requested, candidate)
                    accounted = event.usage.event_id
                    continue
                if first_byte_at is None:
                    first_byte_at = time.monotonic()
                yield candidate, event
            failure = None
            if accounted:
                # The answer's end (unary reply, or the stream's [DONE]) waits for
                # the usage service to hold the record durably.
                await self.usage.durable(accounted, DURABLE_WAIT_S)
        except grpc.aio.AioRpcError as exc:
            failure = from_rpc_error(exc, "provider")
            raise failure from None
        finally:
            self.routing.finished(candidate, started_at, first_byte_at, failure)
            if not accounted:
                self._account_lost(request, admission, requested, candidate)
            call.cancel()

    def _account(
        self,
        record: usage_pb2.UsageRecord,
        admission: Admission,
        requested: str,
        candidate: Candidate,
    ) -> None:
        """Attribute an attempt's usage record and hand it to the usage pipeline."""
        key = admission.key
        admission.tokens += record.total_tokens
        record.key_name = key.name if key else ""
        record.requested_model = requested
        record.model = candidate.model.name
        record.router_instance = self.instance
        record.sequence = next(self._sequence)
        record.config_version = admission.catalog.version
        record.surface = surface.current()
        self.usage.submit(record)
        usage_log.debug(
            "usage",
            extra=log_fields(
                event_id=record.event_id,
                attempt=record.attempt,
                key=record.key_name,
                model=record.model,
                deployment=record.deployment_id,
                status=usage_pb2.UsageStatus.Name(record.status),
                prompt_tokens=record.prompt_tokens,
                completion_tokens=record.completion_tokens,
                estimated=record.estimated,
                latency_ms=round(record.latency_ms, 3),
                ttft_ms=round(record.ttft_ms, 3),
                sequence=record.sequence,
            ),
        )

    def _account_lost(
        self,
        request: provider_pb2.StreamGenerateRequest,
        admission: Admission,
        requested: str,
        candidate: Candidate,
    ) -> None:
        """An attempt whose record never arrived (cancelled, or the provider
        died): account it here, so no attempt goes uncounted."""
        record = usage_pb2.UsageRecord(
            event_id=uuid7(),
            request_id=request.request_id,
            attempt=request.attempt,
            deployment_id=candidate.deployment_id,
            provider=candidate.provider.name,
            upstream_model=candidate.deployment.model,
            stream=request.stream,
            status=usage_pb2.USAGE_STATUS_CANCELLED,
            estimated=True,
        )
        self._account(record, admission, requested, candidate)

    def _build(self, requested: str, field: str, params: Any, stream: bool) -> BuildRequest:
        request_id = request_id_var.get() or uuid7()

        def build(candidate: Candidate, attempt: int) -> provider_pb2.StreamGenerateRequest:
            request = provider_pb2.StreamGenerateRequest(
                request_id=request_id,
                attempt=attempt,
                stream=stream,
                target=_target(candidate),
            )
            getattr(request, field).CopyFrom(params)
            return request

        return build

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
        "completion"). Callers send the response metadata only once nothing else
        can fail: an error after it travels in trailers, where the edge cannot turn
        it into an HTTP status."""
        answer: tuple[Candidate, Any] | None = None
        build = self._build(params.model, kind, params, stream=False)
        event_field = _ANSWER_FIELDS[kind]
        async for candidate, event in self._generate(
            context, admission, params.model, build, False
        ):
            if event.WhichOneof("event") == event_field:
                result = getattr(event, event_field)
                result.model = params.model
                answer = (candidate, result)
        if answer is None:
            raise SwitchboardError(R.ERROR_REASON_UPSTREAM_ERROR, "the upstream sent no answer")
        return answer

    # -- vision --------------------------------------------------------------

    async def CreateVisionCompletion(
        self, request: router_pb2.CreateVisionCompletionRequest, context: Context
    ) -> router_pb2.CreateVisionCompletionResponse:
        self.auth.authenticate(context.invocation_metadata() or ())
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
        build = self._build(params.model, kind, params, stream=True)
        event_field = _CHUNK_FIELDS[kind]
        events = self._generate(context, admission, params.model, build, True)
        async for candidate, event in events:
            if event.WhichOneof("event") != event_field:
                continue
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
        async for body in _sse(chunks, context):
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
        request_id = request_id_var.get() or uuid7()

        async def run(
            candidate: Candidate, attempt: int
        ) -> AsyncGenerator[tuple[Candidate, provider_pb2.CreateEmbeddingResponse], None]:
            call = provider_pb2.CreateEmbeddingRequest(
                request_id=request_id, attempt=attempt, target=_target(candidate), params=params
            )
            started_at = self.routing.started(candidate)
            failure: SwitchboardError | None = SwitchboardError(
                R.ERROR_REASON_CANCELLED, "the caller went away"
            )
            try:
                response = await self.provider.CreateEmbedding(
                    call,
                    timeout=remaining(context, MAX_CALL_S),
                    metadata=((REQUEST_ID_KEY, request_id),),
                )
                failure = None
            except grpc.aio.AioRpcError as exc:
                failure = from_rpc_error(exc, "provider")
                raise failure from None
            finally:
                self.routing.finished(candidate, started_at, None, failure)
                if failure is not None:
                    lost = provider_pb2.StreamGenerateRequest(
                        request_id=request_id, attempt=attempt, target=call.target
                    )
                    self._account_lost(lost, admission, params.model, candidate)
            self._account(response.usage, admission, params.model, candidate)
            await self.usage.durable(response.usage.event_id, DURABLE_WAIT_S)
            yield candidate, response

        try:
            async for candidate, response in self._attempts(
                context, admission, params.model, False, run
            ):
                response.embeddings.model = params.model
                await _label(context, candidate)
                return response.embeddings
        finally:
            self._settle(admission)
        raise AssertionError("_attempts ends with an answer or an error")

    # -- models and health ---------------------------------------------------

    async def ListModels(
        self, request: router_pb2.ListModelsRequest, context: Context
    ) -> router_pb2.ListModelsResponse:
        key = self.auth.authenticate(context.invocation_metadata() or ())
        return router_pb2.ListModelsResponse(object="list", data=self.catalog.visible(key))

    async def GetModel(
        self, request: router_pb2.GetModelRequest, context: Context
    ) -> openai_pb2.Model:
        key = self.auth.authenticate(context.invocation_metadata() or ())
        model = self.catalog.resolve(request.model, key)
        return self.catalog.describe(model, details=True)

    async def GetHealth(
        self, request: router_pb2.GetHealthRequest, context: Context
    ) -> router_pb2.GetHealthResponse:
        return router_pb2.GetHealthResponse(status="ok", version=VERSION)

    async def GetRoutingHealth(
        self, request: router_pb2.GetRoutingHealthRequest, context: Context
    ) -> router_pb2.GetRoutingHealthResponse:
        require_admin(context.invocation_metadata() or (), self.admin_key)
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


async def _sse(
    chunks: AsyncIterator[tuple[Candidate, dict[str, Any]]], context: Context
) -> AsyncIterator[httpbody_pb2.HttpBody]:
    """Frame chunks as OpenAI server-sent events. Errors before the first byte
    propagate (the edge answers with the right HTTP status); after it, they
    become an error event, since the status line is already sent."""
    started = False
    try:
        async for candidate, payload in chunks:
            if not started:
                await _label(context, candidate)
                started = True
            yield httpbody_pb2.HttpBody(content_type=render.CONTENT_TYPE, data=render.sse(payload))
    except SwitchboardError as err:
        if not started:
            raise
        log.warning("stream failed after it started", extra=log_fields(reason=err.reason_name))
        yield httpbody_pb2.HttpBody(content_type=render.CONTENT_TYPE, data=render.error_event(err))
        return
    yield httpbody_pb2.HttpBody(content_type=render.CONTENT_TYPE, data=render.DONE)


async def setup(server: grpc.aio.Server, settings: Settings) -> Mounted:
    channel = service_channel(settings.address("provider"), settings.tls)
    usage_channel = service_channel(settings.address("usage"), settings.tls)
    reporter = UsageReporter(
        usage_pb2_grpc.UsageServiceStub(usage_channel),
        max_pending=int(os.environ.get("SWITCHBOARD_USAGE_BUFFER") or 100_000),
    )
    reporter.start()
    limiter: Limiter = (
        RedisLimiter(
            settings.redis_url,
            fail_open=os.environ.get("SWITCHBOARD_LIMITS_ON_REDIS_ERROR", "open") != "closed",
        )
        if settings.redis_url
        else LocalLimiter()
    )
    # Until the registry answers, no model exists and every key is refused.
    servicer = RouterServicer(
        SwitchboardConfig(keys=[]),
        provider_pb2_grpc.ProviderServiceStub(channel),
        reporter,
        limiter,
        settings.admin_key,
        gpu_addresses=[
            address.strip()
            for address in (
                os.environ.get("SWITCHBOARD_GPU_ADDRS") or settings.address("gpu")
            ).split(",")
            if address.strip()
        ],
        tls=settings.tls,
    )
    unfollow = await follow_registry(
        settings,
        lambda snapshot: servicer.reconfigure(config_from_snapshot(snapshot), snapshot.version),
    )
    router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, server)
    name = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
    surfaces, close_surfaces = mount_surfaces(servicer, server, settings)

    async def close() -> None:
        await unfollow()
        await close_surfaces()
        await servicer.close()
        await reporter.close(flush_s=5.0)
        await servicer.settled()
        await limiter.close()
        await usage_channel.close()
        await channel.close()

    return Mounted([name, *surfaces], [close])
