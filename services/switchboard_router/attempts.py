"""Attempts: one admitted request tried over its deployments and fallbacks.

One loop serves every call the router makes to the provider (streamed and
unary generations, embeddings): an `Exchange` says how to ask one deployment,
the loop decides which deployment to ask next and when to stop. Retries happen
only before the first item reaches the caller: once one is out, a failure ends
the call with an error, never a silent truncation.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc

from switchboard.provider.v1 import provider_pb2, provider_pb2_grpc
from switchboard.usage.v1 import usage_pb2
from switchboard_common import tracing
from switchboard_common.deadlines import remaining
from switchboard_common.errors import R, SwitchboardError, from_rpc_error, from_status
from switchboard_common.ids import uuid7
from switchboard_common.interceptors import REQUEST_ID_KEY
from switchboard_common.logs import log_fields, request_id_var
from switchboard_common.pseudo_stream import chunks_from_completion
from switchboard_router.accounting import Accounting
from switchboard_router.admission import Admission
from switchboard_router.backoff import fits, retry_delay
from switchboard_router.catalog import Candidate
from switchboard_router.cut_short import CutShort
from switchboard_router.native import NativeCall
from switchboard_router.routing import FAILOVER, RETRY_AGAIN, Routing
from switchboard_router.settings import DEFAULT_MAX_ATTEMPTS

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]

MAX_CALL_S = 600.0
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
# What an attempt asks the provider: a stream, or a whole answer.
Ask = TypeVar("Ask", provider_pb2.StreamGenerateRequest, provider_pb2.GenerateRequest)


def _request_id() -> str:
    return request_id_var.get() or uuid7()


def target(candidate: Candidate) -> provider_pb2.Target:
    return provider_pb2.Target(
        provider=candidate.provider.name,
        upstream_model=candidate.deployment.model,
        deployment_id=candidate.deployment_id,
        config_version=candidate.version,
    )


class Exchange(Protocol[T_co]):
    """How to ask one deployment. `call` yields the attempt's answer items and,
    among them, its usage record (which the loop accounts, never passes on)."""

    # Shared by every attempt of the request.
    @property
    def request_id(self) -> str: ...
    @property
    def stream(self) -> bool: ...
    # Whether the first answer item times the deployment's first byte.
    @property
    def timed_first_byte(self) -> bool: ...

    def call(
        self, candidate: Candidate, attempt: int, timeout_s: float | None
    ) -> AsyncGenerator[usage_pb2.UsageRecord | T_co, None]: ...

    # What an attempt cut short (cancelled, deadline, provider gone) is counted
    # as, from the items it passed on; None: counted as nothing used.
    def cut_short(self, candidate: Candidate, attempt: int) -> CutShort | None: ...


def _as_events(
    event: provider_pb2.StreamGenerateResponse, pseudo: bool
) -> Iterator[provider_pb2.StreamGenerateResponse]:
    """An upstream event as the caller gets it: a whole chat answer to a stream
    request becomes chunks (pseudo-streaming); anything else passes, marked
    pseudo when it answers a stream request (a whole legacy completion is
    already a valid chunk)."""
    if pseudo and event.WhichOneof("event") == "chat_completion":
        for chunk in chunks_from_completion(event.chat_completion):
            yield provider_pb2.StreamGenerateResponse(chat_chunk=chunk, pseudo_stream=True)
        return
    event.pseudo_stream = event.pseudo_stream or pseudo
    yield event


@dataclass(frozen=True)
class Generation:
    """A chat or legacy completion (`kind` "chat" or "completion"), unary or
    streamed, through the provider's StreamGenerate."""

    provider: provider_pb2_grpc.ProviderServiceAsyncStub
    kind: str
    params: Any
    stream: bool
    request_id: str = field(default_factory=_request_id)
    timed_first_byte: bool = True
    # The caller's own request, for upstreams that serve its API natively.
    native: NativeCall | None = None

    def streams(self, candidate: Candidate) -> bool:
        # A model or deployment that cannot stream is asked for its whole answer.
        return self.stream and candidate.model.streaming and candidate.deployment.streaming

    def request(self, candidate: Candidate, attempt: int) -> provider_pb2.StreamGenerateRequest:
        return self._fill(
            provider_pb2.StreamGenerateRequest(
                request_id=self.request_id,
                attempt=attempt,
                stream=self.streams(candidate),
                target=target(candidate),
            )
        )

    def _whole(self, candidate: Candidate, attempt: int) -> provider_pb2.GenerateRequest:
        return self._fill(
            provider_pb2.GenerateRequest(
                request_id=self.request_id, attempt=attempt, target=target(candidate)
            )
        )

    def _fill(self, request: Ask) -> Ask:
        getattr(request, self.kind).CopyFrom(self.params)
        if self.native is not None:
            request.native.CopyFrom(self.native.request)
        return request

    def cut_short(self, candidate: Candidate, attempt: int) -> CutShort | None:
        return CutShort(self.request(candidate, attempt))

    async def call(
        self, candidate: Candidate, attempt: int, timeout_s: float | None
    ) -> AsyncGenerator[usage_pb2.UsageRecord | provider_pb2.StreamGenerateResponse, None]:
        streams = self.streams(candidate)
        pseudo = self.stream and not streams
        metadata = ((REQUEST_ID_KEY, self.request_id),)
        if not streams:
            # One answer: the provider's unary Generate (half a stream's cost).
            response = await self.provider.Generate(
                self._whole(candidate, attempt), timeout=timeout_s, metadata=metadata
            )
            kind = response.WhichOneof("answer")
            if kind is not None:
                answer = provider_pb2.StreamGenerateResponse(native=response.native)
                getattr(answer, kind).CopyFrom(getattr(response, kind))
                for event in _as_events(answer, pseudo):
                    yield event
            yield response.usage
            if response.HasField("error"):
                raise from_status(response.error)
            return
        call = self.provider.StreamGenerate(
            self.request(candidate, attempt), timeout=timeout_s, metadata=metadata
        )
        try:
            async for event in call:
                if event.HasField("usage"):
                    yield event.usage
                else:
                    for item in _as_events(event, pseudo):
                        yield item
        finally:
            call.cancel()


@dataclass(frozen=True)
class Unary:
    """A call through one of the provider's unary RPCs (CreateEmbedding,
    CreateTranscription, CreateRerank, CreateImage): `rpc` is the stub's method, `request_type` its
    request message, `extra` its fields beside the params; the response carries
    the answer and its `usage`."""

    rpc: Any
    request_type: Any
    params: Any
    extra: dict[str, Any] = field(default_factory=dict)
    request_id: str = field(default_factory=_request_id)
    stream: bool = False
    timed_first_byte: bool = False

    async def call(
        self, candidate: Candidate, attempt: int, timeout_s: float | None
    ) -> AsyncGenerator[Any, None]:
        request = self.request_type(
            request_id=self.request_id,
            attempt=attempt,
            target=target(candidate),
            params=self.params,
            **self.extra,
        )
        response = await self.rpc(
            request, timeout=timeout_s, metadata=((REQUEST_ID_KEY, self.request_id),)
        )
        yield response.usage
        yield response

    def cut_short(self, candidate: Candidate, attempt: int) -> CutShort | None:
        return None


@dataclass(frozen=True)
class Speech:
    """Text to speech through the provider's StreamSpeech: audio pieces as they
    arrive, then the usage record."""

    provider: provider_pb2_grpc.ProviderServiceAsyncStub
    params: Any
    request_id: str = field(default_factory=_request_id)
    stream: bool = True
    timed_first_byte: bool = True

    async def call(
        self, candidate: Candidate, attempt: int, timeout_s: float | None
    ) -> AsyncGenerator[usage_pb2.UsageRecord | provider_pb2.StreamSpeechResponse, None]:
        request = provider_pb2.StreamSpeechRequest(
            request_id=self.request_id,
            attempt=attempt,
            target=target(candidate),
            params=self.params,
        )
        call = self.provider.StreamSpeech(
            request, timeout=timeout_s, metadata=((REQUEST_ID_KEY, self.request_id),)
        )
        try:
            async for event in call:
                yield event.usage if event.HasField("usage") else event
        finally:
            call.cancel()

    def cut_short(self, candidate: Candidate, attempt: int) -> CutShort | None:
        # Characters are what speech is billed by: a cut-short attempt is
        # accounted by the router's lost-record path.
        return None


class Attempts:
    def __init__(
        self, routing: Routing, accounting: Accounting, max_attempts: int = DEFAULT_MAX_ATTEMPTS
    ) -> None:
        self.routing = routing
        self.accounting = accounting
        self.max_attempts = max_attempts
        self._rng = random.Random()  # noqa: S311 - retry jitter

    async def run(
        self, context: Context, admission: Admission, requested: str, exchange: Exchange[T]
    ) -> AsyncIterator[tuple[Candidate, T]]:
        """The answer items and the deployment that sent them; the admission's
        reservations are settled however it ends."""
        try:
            async for item in self._attempts(context, admission, requested, exchange):
                yield item
        finally:
            self.accounting.settle(admission)

    def _plan(self, admission: Admission, requested: str, stream: bool) -> list[Candidate]:
        plan, notes = self.routing.plan(admission.catalog, admission.model, stream)
        if not plan and admission.model.self_hosted and not admission.model.deployments:
            raise SwitchboardError(
                R.ERROR_REASON_MODEL_NOT_RUNNING,
                f"The model '{requested}' runs on a self-hosted engine that is not running "
                "right now (starting, stopped or failed). Retry once it runs.",
            )
        if not plan:
            why = f" ({'; '.join(notes)})" if notes else ""
            raise SwitchboardError(
                R.ERROR_REASON_NO_HEALTHY_DEPLOYMENT,
                f"The model '{requested}' has no deployment that can serve it right now{why}.",
            )
        return plan

    async def _attempts(
        self, context: Context, admission: Admission, requested: str, exchange: Exchange[T]
    ) -> AsyncIterator[tuple[Candidate, T]]:
        """Try the plan in order, each deployment its breaker and limits admit,
        at most max_attempts in all. When a pass over the plan ends in an error
        worth retrying, pass again after a jittered backoff that honours the
        upstream's Retry-After, if the caller's deadline leaves room."""
        try:
            plan = self._plan(admission, requested, exchange.stream)
        except SwitchboardError:
            # The request's own rate limit is the answer before "nothing can serve it".
            await self.routing.reserve(admission.reservations, admission.unreserved)
            raise
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
                    candidate, admission.estimate, admission.reservations, admission.unreserved
                )
                if refusal is not None:
                    refused = refusal
                    continue
                attempt, tried = tried, tried + 1
                started = False
                try:
                    async with contextlib.aclosing(
                        self.attempt(context, admission, requested, exchange, candidate, attempt)
                    ) as items:
                        async for item in items:
                            started = True
                            yield candidate, item
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
        # No attempt took the request's own limits along (every deployment was
        # cooling down): they still come first.
        await self.routing.reserve(admission.reservations, admission.unreserved)
        if last is not None:
            raise last
        if refused is not None and refused.reason != R.ERROR_REASON_NO_HEALTHY_DEPLOYMENT:
            raise refused
        raise SwitchboardError(
            R.ERROR_REASON_NO_HEALTHY_DEPLOYMENT,
            f"The model '{requested}' has no healthy deployment right now: each one is "
            "cooling down after repeated upstream failures. Retry shortly.",
        )

    async def attempt(
        self,
        context: Context,
        admission: Admission,
        requested: str,
        exchange: Exchange[T],
        candidate: Candidate,
        attempt: int,
    ) -> AsyncGenerator[T, None]:
        """One upstream attempt; its usage record is accounted whatever happens.
        (Public for the active health probes, which make single attempts.)"""
        started_at = self.routing.started(candidate)
        first_byte_at: float | None = None
        failure: SwitchboardError | None = SwitchboardError(
            R.ERROR_REASON_CANCELLED, "the caller went away"
        )
        accounted = ""
        seen = exchange.cut_short(candidate, attempt)
        # Current only while the provider is asked and the record accounted:
        # the provider call and the usage record carry it.
        span = _attempt_span(exchange, candidate, attempt)
        call = tracing.within(
            span, exchange.call(candidate, attempt, remaining(context, MAX_CALL_S))
        )
        try:
            async with contextlib.aclosing(call) as items:
                async for item in items:
                    if isinstance(item, usage_pb2.UsageRecord):
                        with tracing.attached(span):
                            self.accounting.record(item, admission, requested, candidate)
                        _tokens(span, item)
                        accounted = item.event_id
                        continue
                    if first_byte_at is None and exchange.timed_first_byte:
                        first_byte_at = time.monotonic()
                    if seen is not None:
                        seen.saw(item)
                    yield item
            failure = None
            if accounted:
                await self.accounting.durable(accounted)
        except grpc.aio.AioRpcError as exc:
            failure = from_rpc_error(exc, "provider")
            raise failure from None
        except SwitchboardError as err:
            # The upstream failure a unary reply carried (its record came first).
            failure = err
            raise
        finally:
            self.routing.finished(candidate, started_at, first_byte_at, failure)
            with tracing.attached(span):
                if not accounted and seen is not None:
                    self.accounting.record(seen.record(), admission, requested, candidate)
                elif not accounted:
                    self.accounting.record_lost(
                        exchange.request_id,
                        attempt,
                        exchange.stream,
                        admission,
                        requested,
                        candidate,
                    )
            tracing.end(span, failure)


def _attempt_span(exchange: Exchange[Any], candidate: Candidate, attempt: int) -> tracing.Span:
    return tracing.start(
        "router.attempt",
        attributes={
            tracing.REQUEST_ID: exchange.request_id,
            tracing.PROVIDER: candidate.provider.kind,
            tracing.REQUEST_MODEL: candidate.deployment.model,
            "switchboard.deployment": candidate.deployment_id,
            "switchboard.attempt": attempt,
        },
    )


def _tokens(span: tracing.Span, record: usage_pb2.UsageRecord) -> None:
    if span.is_recording():
        span.set_attributes(
            {
                tracing.INPUT_TOKENS: record.prompt_tokens,
                tracing.OUTPUT_TOKENS: record.completion_tokens,
            }
        )
