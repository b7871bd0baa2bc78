"""The provider inside the router's process (SWITCHBOARD_PROVIDER_PLACEMENT=router).

The router then calls the provider's own servicer directly instead of over a
gRPC channel: the same code, adapters and per-attempt usage record, without a
Python gRPC hop: a request's serialisation both ways, the channel, the
provider's server and its interceptors (bench/README.md, "Provider placement").
What the remote placement keeps and this one gives up: the provider's upstream
credentials in a process of their own, and scaling it apart from the router.

`EmbeddedProvider` has the stub's shape (the methods `attempts.py` calls, with
`timeout` and `metadata`), so the attempt loop cannot tell the two apart, and
it fails as the stub would: a `SwitchboardError` whatever went wrong, with the
reason `from_rpc_error` gives the same failure over gRPC.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from switchboard.provider.v1 import provider_pb2
from switchboard_common.config import SwitchboardConfig
from switchboard_common.deadlines import Deadline
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.logs import log_fields
from switchboard_provider.service import ProviderServicer

log = logging.getLogger(__name__)

_SERVICE = provider_pb2.DESCRIPTOR.services_by_name["ProviderService"]


def _failure(exc: BaseException, method: str) -> SwitchboardError:
    """What the router would have made of this failure had it come over gRPC."""
    if isinstance(exc, SwitchboardError):
        return exc
    if isinstance(exc, TimeoutError):
        return SwitchboardError(
            R.ERROR_REASON_UPSTREAM_TIMEOUT, "the provider service did not answer in time"
        )
    # The provider's error interceptor's rule: logged here, never sent.
    log.error("unhandled error in provider %s", method, exc_info=exc, extra=log_fields())
    return SwitchboardError(R.ERROR_REASON_INTERNAL, "internal error")


class _Streaming:
    """A server-streaming call, as the stub's: iterate it, or cancel it. The
    provider bounds each of its waits by the call's timeout itself."""

    def __init__(self, events: AsyncGenerator[Any, None], method: str) -> None:
        self._events = events
        self._method = method
        self._done = False

    def __aiter__(self) -> _Streaming:
        return self

    async def __anext__(self) -> Any:
        try:
            return await anext(self._events)
        except StopAsyncIteration:
            self._done = True
            raise
        except Exception as exc:
            self._done = True
            raise _failure(exc, self._method) from exc

    def cancel(self) -> bool:
        """Close the provider's generator, as cancelling a call ends the
        provider's handler: its `finally` closes the upstream request. The
        stub's cancel is synchronous and closing is not, so it runs as a task."""
        if self._done:
            return False
        self._done = True
        task = asyncio.get_running_loop().create_task(self._events.aclose())
        # Keep a reference: the loop holds tasks only weakly.
        _closing.add(task)
        task.add_done_callback(_closing.discard)
        return True


_closing: set[asyncio.Task[None]] = set()


class EmbeddedProvider:
    """The ProviderService stub's methods, served by a servicer in this process."""

    def __init__(self) -> None:
        # Empty until the router's registry follower hands it the first snapshot.
        self.servicer = ProviderServicer(SwitchboardConfig())

    def reconfigure(self, config: SwitchboardConfig, version: int) -> None:
        self.servicer.reconfigure(config, version)

    async def close(self) -> None:
        await self.servicer.close()

    def __getattr__(self, method: str) -> Callable[..., Any]:
        descriptor = _SERVICE.methods_by_name.get(method)
        if descriptor is None:
            raise AttributeError(method)
        handler = getattr(self.servicer, method)
        if descriptor.server_streaming:

            def stream(
                request: Any, timeout: float | None = None, metadata: Any = None
            ) -> _Streaming:
                return _Streaming(handler(request, Deadline(timeout)), method)

            setattr(self, method, stream)  # found here once, then an attribute
            return stream

        async def unary(
            request: Any,
            timeout: float | None = None,  # noqa: ASYNC109 - the stub's signature
            metadata: Any = None,
        ) -> Any:
            call: Awaitable[Any] = handler(request, Deadline(timeout))
            try:
                async with asyncio.timeout(timeout):
                    return await call
            except Exception as exc:
                raise _failure(exc, method) from exc

        setattr(self, method, unary)
        return unary
