"""OpenTelemetry tracing, off unless OTEL_EXPORTER_OTLP_ENDPOINT is set.

Off, nothing is installed: the API's default tracer provider hands out
non-recording spans, and the gRPC hooks below are not even added (`enabled()`
is False), so a request pays one boolean check per hop. On, each service
process has one TracerProvider (service.name `switchboard-<service>`) that
batches spans to the OTLP/gRPC endpoint; the standard OTEL_* variables
(OTEL_BSP_SCHEDULE_DELAY, OTEL_EXPORTER_OTLP_INSECURE, ...) tune it.

Context crosses every hop as a W3C `traceparent`: gRPC metadata (the server
interceptor extracts it, the client interceptors inject it), the usage
record's RecordUsageRequest.traceparent (one long-lived stream carries many
requests' records), the outbox's trace column and the Kafka message headers.
Span attributes follow the OpenTelemetry GenAI semantic conventions."""

from __future__ import annotations

import contextlib
import os
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from typing import Any, TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span as Span
from opentelemetry.trace import SpanKind as SpanKind
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

ENDPOINT_VAR = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACEPARENT = "traceparent"
REQUEST_ID = "switchboard.request_id"
# GenAI semantic conventions (gen_ai.*), as of semconv 1.37.
OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"

# Our operation kinds (usage's Operation, admission's kind) as gen_ai.operation.name.
_OPERATIONS = {"embedding": "embeddings", "completion": "text_completion"}
T = TypeVar("T")
_PROPAGATOR = TraceContextTextMapPropagator()
# The span of something not traced (a record that came without a traceparent).
NOT_TRACED: Span = trace.INVALID_SPAN
# What span() and attached() give while off: one shared, reusable no-op.
_OFF = contextlib.nullcontext(NOT_TRACED)
_tracer: trace.Tracer | None = None
_shutdown: Callable[[], None] | None = None


def operation(kind: str) -> str:
    return _OPERATIONS.get(kind, kind)


def enabled() -> bool:
    return _tracer is not None


def setup(service: str, env: Mapping[str, str] | None = None) -> bool:
    """Install this process's tracer provider when an OTLP endpoint is set;
    returns whether tracing is on. Called once, from the service's main()."""
    env = os.environ if env is None else env
    if not env.get(ENDPOINT_VAR):
        return False
    # Imported only when on: a process that does not trace loads no SDK.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: f"switchboard-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    # Global too, so that libraries that trace on their own join the same traces.
    trace.set_tracer_provider(provider)
    use(provider.get_tracer("switchboard"), provider.shutdown)
    return True


def use(tracer: trace.Tracer | None, shutdown: Callable[[], None] | None = None) -> None:
    """Trace with `tracer` from now on (None: stop tracing). setup() calls it
    with the process's provider; tests with an in-memory one."""
    global _tracer, _shutdown
    _tracer, _shutdown = tracer, shutdown


def shutdown() -> None:
    """Export what is still batched (at process exit)."""
    if _shutdown is not None:
        _shutdown()


def traceparent(span: Span | None = None) -> str:
    """The W3C traceparent of `span` (default: the current span), or "" when
    nothing is traced."""
    if _tracer is None:
        return ""
    ctx = trace.set_span_in_context(span) if span is not None else None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=ctx)
    return carrier.get(TRACEPARENT, "")


def parent(value: str | bytes | None) -> otel_context.Context | None:
    """The context a received traceparent names (None: none, or invalid)."""
    if not value:
        return None
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    ctx = _PROPAGATOR.extract({TRACEPARENT: text})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def start(
    name: str,
    kind: SpanKind = SpanKind.INTERNAL,
    context: otel_context.Context | None = None,
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> Span:
    """A span, not made current (callers that yield across it must not leave
    a context attached); end it with `end`. Off, the non-recording span."""
    if _tracer is None:
        return NOT_TRACED
    return _tracer.start_span(name, context, kind, attributes)


def end(span: Span, error: BaseException | None = None) -> None:
    if not span.is_recording():
        return
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:200]))
    span.end()


def attached(span: Span) -> contextlib.AbstractContextManager[object]:
    """Makes a span current for a stretch of code that does not yield to a
    caller (`with attached(span): await ...`); a non-recording span: no-op."""
    return _Attached(span) if span.is_recording() else _OFF


class _Attached:
    def __init__(self, span: Span) -> None:
        self.span = span
        self._token: object | None = None

    def __enter__(self) -> Span:
        self._token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, *exc: object) -> None:
        otel_context.detach(self._token)  # type: ignore[arg-type]


def span(
    name: str, attributes: Mapping[str, str | int | float | bool] | None = None
) -> contextlib.AbstractContextManager[Span]:
    """A current span around code that does not yield to a caller; an
    exception through it marks it failed. Off: a shared no-op."""
    if _tracer is None:
        return _OFF
    return _tracer.start_as_current_span(name, attributes=attributes)


def within(span: Span, items: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    """`items`, with `span` current while each item is produced (so the calls
    it makes carry the span) but not while the consumer holds the item."""
    if not span.is_recording():
        return items
    return _within(span, items)


async def _within(span: Span, items: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    try:
        while True:
            with attached(span):
                try:
                    item = await anext(items)
                except StopAsyncIteration:
                    return
            yield item
    finally:
        with attached(span):
            await items.aclose()


# --- gRPC ---------------------------------------------------------------------


class ServerSpan:
    """The span of one served RPC, parented on the caller's traceparent and
    current while the handler runs (interceptors._Call owns it)."""

    def __init__(
        self, service: str, method: str, metadata: Iterable[tuple[str, Any]], request_id: str
    ) -> None:
        remote = parent(next((v for k, v in metadata if k == TRACEPARENT), None))
        self.span = start(
            f"{service}/{method}",
            SpanKind.SERVER,
            remote,
            {
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": method,
                REQUEST_ID: request_id,
            },
        )
        self._token = otel_context.attach(trace.set_span_in_context(self.span))

    def finish(self, code: str, error: BaseException | None) -> None:
        self.span.set_attribute("rpc.grpc.status_code", code)
        end(self.span, error if code != "OK" else None)
        otel_context.detach(self._token)


def _with_traceparent(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    value = traceparent()
    if not value:
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata[TRACEPARENT] = value
    return details._replace(metadata=metadata)  # type: ignore[attr-defined,no-any-return]


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Callable[..., Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        return await continuation(_with_traceparent(details), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        return await continuation(_with_traceparent(details), request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Callable[..., Awaitable[Any]], details: Any, requests: Any
    ) -> Any:
        return await continuation(_with_traceparent(details), requests)


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Callable[..., Awaitable[Any]], details: Any, requests: Any
    ) -> Any:
        return await continuation(_with_traceparent(details), requests)


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """What a channel adds to carry the caller's trace (none while off)."""
    if _tracer is None:
        return []
    return [_UnaryUnary(), _UnaryStream(), _StreamUnary(), _StreamStream()]
