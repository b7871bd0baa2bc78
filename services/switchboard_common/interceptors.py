"""Server interceptors: request ids, error rendering, RPC metrics and (when
tracing is on) each RPC's server span.

Handlers raise SwitchboardError; the interceptor turns it into a
google.rpc.Status with ErrorInfo plus the edge's HTTP metadata. Anything else
becomes INTERNAL with a generic message (the exception is logged, never sent).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from switchboard_common.errors import R, SwitchboardError
from switchboard_common.logs import log_fields, request_id_var
from switchboard_common.metrics import RPC_DURATION, RPC_ERRORS
from switchboard_common.tracing import ServerSpan, enabled

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
# Probes every second, not requests: traced, they would bury the requests' traces.
_UNTRACED = ("grpc.health.v1.", "grpc.reflection.")
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


def _request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], err: SwitchboardError) -> None:
    status = err.to_status()
    metadata = (("grpc-status-details-bin", status.SerializeToString()), *err.edge_metadata())
    await context.abort(err.code, err.message, trailing_metadata=metadata)


class _Call:
    """Bookkeeping for one RPC: request id, timing, and error handling."""

    def __init__(
        self,
        service: str,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        rpc_service: str = "",
    ):
        self.service = service
        self.method = method
        self.context = context
        self.start = time.perf_counter()
        request_id = _request_id(context)
        self.token = request_id_var.set(request_id)
        self.code = "OK"
        self.error: BaseException | None = None
        self.span = (
            ServerSpan(rpc_service, method, context.invocation_metadata() or (), request_id)
            if enabled() and not rpc_service.startswith(_UNTRACED)
            else None
        )

    async def fail(self, exc: BaseException) -> None:
        if isinstance(exc, SwitchboardError):
            err = exc
        else:
            log.error(
                "unhandled error in %s",
                self.method,
                exc_info=exc,
                extra=log_fields(method=self.method),
            )
            err = SwitchboardError(R.ERROR_REASON_INTERNAL, "internal error")
        self.code = err.code.name
        self.error = err
        RPC_ERRORS.labels(self.service, self.method, err.reason_name).inc()
        await abort_with(self.context, err)

    def finish(self) -> None:
        RPC_DURATION.labels(self.service, self.method, self.code).observe(
            time.perf_counter() - self.start
        )
        if self.span is not None:
            self.span.finish(self.code, self.error)
        request_id_var.reset(self.token)


class _Undecodable:
    """A request message the deserializer refused (for example, nested past
    protobuf's limit): the handler never sees it; the caller gets INVALID_ARGUMENT."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as exc:
            return _Undecodable(exc)

    return decode


def _undecodable() -> SwitchboardError:
    return SwitchboardError(
        R.ERROR_REASON_INVALID_REQUEST,
        "the request could not be decoded (malformed, or nested too deeply)",
    )


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise _undecodable()
        yield request


def _request(request: Any) -> Any:
    """The request a handler may see: a refused message raises, a stream of
    requests raises when it reaches one."""
    if isinstance(request, _Undecodable):
        raise _undecodable()
    if hasattr(request, "__aiter__"):
        return _checked(request)
    return request


def _passthrough(exc: BaseException) -> bool:
    # AbortError is how grpc.aio ends a call that already aborted; cancellation
    # means the client left; neither is ours to render.
    return isinstance(exc, asyncio.CancelledError | grpc.aio.AbortError)


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, service: str) -> None:
        self.service = service

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Req, _Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Req, _Resp] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        rpc_service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        service = self.service
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(service, method, handler.unary_unary, rpc_service),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(service, method, handler.unary_stream, rpc_service),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(service, method, handler.stream_unary, rpc_service),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(service, method, handler.stream_stream, rpc_service),
            request_deserializer=_lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


def _wrap_unary(service: str, method: str, behavior: Any, rpc_service: str) -> Any:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        call = _Call(service, method, context, rpc_service)
        try:
            return await behavior(_request(request), context)
        except BaseException as exc:
            if _passthrough(exc):
                raise
            await call.fail(exc)
        finally:
            call.finish()

    return wrapper


def _wrap_stream(service: str, method: str, behavior: Any, rpc_service: str) -> Any:
    async def wrapper(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        call = _Call(service, method, context, rpc_service)
        try:
            async for response in behavior(_request(request), context):
                yield response
        except BaseException as exc:
            if _passthrough(exc) or isinstance(exc, GeneratorExit):
                raise
            await call.fail(exc)
        finally:
            call.finish()

    return wrapper
