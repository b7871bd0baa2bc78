"""The HTTP transport under the openai and anthropic adapters: each SDK's own
aiohttp transport, on a session of ours that sends a request again, at once,
when the pooled connection it took turns out to have been closed by the
server already.

A server may close a kept-alive connection while it waits in our pool: when
its idle timeout ends, or (llama.cpp's server) right after every streamed
response, though that response announced keep-alive. aiohttp learns of the
close only when its event loop reads the FIN, so a call that takes the
connection first writes into a closed socket and fails, before any byte of
an answer, with ServerDisconnectedError or a reset. aiohttp resends such a
request itself only for idempotent methods, and ours are POSTs. The router
would retry it, but after a backoff and counting it against the deployment's
breaker, so one engine's streams could trip its breaker.

So, as Go's net/http does for a request that finds its kept-alive connection
closed, a request that failed so on a reused connection is sent again at
once. aiohttp drops the closed connection, so the next try takes another from
the pool or a new one. A failure on a new connection is the caller's: a lost
connection, which the router retries after a backoff like any other
(UPSTREAM_ERROR), and never sent twice here.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import aiohttp
import httpx2

# How long an idle connection is kept for reuse: under the 5 s after which
# llama.cpp's server (cpp-httplib) and vLLM's (uvicorn) close one, so that a
# call seldom takes a connection just as the server closes it.
KEEPALIVE_S = 4.0
# The SDKs' own limit on connections.
MAX_CONNECTIONS = 1000
# Each try takes a different pooled connection; past this many, give up.
MAX_TRIES = 8

# Set by handle_async_request, marked by the connector when the request takes
# a pooled connection: aiohttp runs both in the caller's task.
_reused: ContextVar[list[bool] | None] = ContextVar("reused_connection", default=None)


class _Connector(aiohttp.TCPConnector):
    """Tells a connection it handed out before (from its pool) from a new one.
    A weak set, not a trace: a trace costs ~30 µs a call (bench/sdk_call.py)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._handed_out: weakref.WeakSet[object] = weakref.WeakSet()

    async def connect(self, *args: Any, **kwargs: Any) -> aiohttp.connector.Connection:
        connection = await super().connect(*args, **kwargs)
        protocol = connection.protocol
        if protocol in self._handed_out:
            mark = _reused.get()
            if mark is not None:
                mark.append(True)
        elif protocol is not None:
            self._handed_out.add(protocol)
        return connection


def session_factory() -> Callable[[], aiohttp.ClientSession]:
    """The aiohttp session the SDK transport would make itself (its TLS
    context, MAX_CONNECTIONS), on a connector that tells a reused connection."""

    def make() -> aiohttp.ClientSession:
        connector = _Connector(
            keepalive_timeout=KEEPALIVE_S,
            ssl=httpx2.create_ssl_context(),
            limit=MAX_CONNECTIONS,
        )
        return aiohttp.ClientSession(connector=connector)

    return make


def connection_error(exc: BaseException) -> aiohttp.ClientConnectionError | None:
    """The aiohttp connection error that exc is, or that caused it; None if
    there is none, or a timeout comes first. The SDKs' aiohttp transports wrap
    it in an httpx2 error (the openai SDK's, in a ConnectTimeout whatever it was)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, TimeoutError):
            return None
        if isinstance(cause, aiohttp.ClientConnectionError):
            return cause
        cause = cause.__cause__
    return None


def closed_before_answer(exc: BaseException) -> bool:
    """Whether exc is a connection that closed or reset under a request, no
    answer read: not a refused connection (nothing was sent) and not a timeout."""
    error = connection_error(exc)
    return isinstance(
        error,
        aiohttp.ServerDisconnectedError
        | aiohttp.ClientConnectionResetError
        | aiohttp.ClientOSError,
    ) and not isinstance(error, aiohttp.ClientConnectorError)


class ResendOnClosedConnection(httpx2.AsyncBaseTransport):
    """An httpx2 transport that sends a request again when the pooled
    connection it went out on had been closed (see the module docstring).
    `inner` is an SDK's AiohttpTransport built with session_factory()."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        for _ in range(MAX_TRIES - 1):
            mark: list[bool] = []
            token = _reused.set(mark)
            try:
                # It returns once the answer's headers are read: a failure
                # raised here came before any answer.
                return await self._inner.handle_async_request(request)
            except httpx2.TransportError as exc:
                if not (mark and closed_before_answer(exc) and _replayable(request)):
                    raise
            finally:
                _reused.reset(token)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _replayable(request: httpx2.Request) -> bool:
    """A body held whole in memory (every JSON call) can be sent again; a
    streamed upload cannot."""
    try:
        request.content  # noqa: B018 - raises if the body is a stream not yet read
    except httpx2.RequestNotRead:
        return False
    return True
