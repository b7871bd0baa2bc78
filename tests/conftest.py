"""What every test shares: `eventually()` for bounded polling, the loopback
upstreams (the fakes of hosted LLM APIs), an embedded ClickHouse with the usage
schema, and whole local stacks."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar, overload

import pytest
import pytest_asyncio

from switchboard_stack.harness import Stack, running_stack
from switchboard_usage.clickhouse import ClickHouse
from tests.support import loop_watch
from tests.support.clickhouse import migrated_clickhouse
from tests.support.gemini_upstream import GeminiUpstream
from tests.support.openai_upstream import OpenAIUpstream, run_in_thread

T = TypeVar("T")


def pytest_configure(config: pytest.Config) -> None:
    loop_watch.install()


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect garbage as each test ends, so that a resource it left unclosed
    (a socket, a Redis connection, a subprocess) warns, and with warnings as
    errors fails, in the test that leaked it rather than wherever the
    collector happens to run next. Autouse fixtures are set up first and torn
    down last: this runs after the test's event loop has closed."""
    yield
    gc.collect()


# The keys the loopback upstreams demand; a stack's providers hand them on.
UPSTREAM_KEY = "sk-loopback-provider-secret-0123456789"
GEMINI_UPSTREAM_KEY = "AIzaLoopbackTestOnlyGeminiKey0001"


# -- eventually ----------------------------------------------------------------


@overload
def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    timeout: float = ...,
    interval: float = ...,
    what: str = ...,
) -> Coroutine[Any, Any, T]: ...


@overload
def eventually(
    check: Callable[[], T], *, timeout: float = ..., interval: float = ..., what: str = ...
) -> T: ...


def eventually(
    check: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Call `check` until it returns something truthy, and return that; an
    AssertionError from it counts as "not yet". After `timeout` seconds, fail
    with the last value (or assertion) it gave.

    A `check` that returns an awaitable makes this a coroutine to await, which
    polls without blocking the event loop (each await is bounded by the time
    left). A plain one is polled here, blocking: use it in synchronous tests,
    or where the awaited work does not run on this thread's event loop."""
    deadline = time.monotonic() + timeout
    first = _attempt(check)
    if inspect.isawaitable(first):
        return _eventually_async(check, first, deadline, interval, timeout, what or _name(check))
    last = first
    while not _done(last):
        if time.monotonic() >= deadline:
            raise _timed_out(what or _name(check), timeout, last)
        time.sleep(interval)
        last = _attempt(check)
    return last


async def _eventually_async(
    check: Callable[[], Awaitable[Any]],
    pending: Awaitable[Any],
    deadline: float,
    interval: float,
    timeout_s: float,
    what: str,
) -> Any:
    last: Any = None
    while True:
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), interval)):
                last = await pending
        except AssertionError as exc:
            last = exc
        except TimeoutError:
            raise _timed_out(what, timeout_s, last) from None
        if _done(last):
            return last
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout_s, last)
        await asyncio.sleep(interval)
        pending = check()


def process_gone(pid: int) -> bool:
    """Whether process `pid` has exited (a check for eventually())."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _attempt(check: Callable[[], Any]) -> Any:
    try:
        return check()
    except AssertionError as exc:
        return exc


def _done(value: Any) -> bool:
    return not isinstance(value, AssertionError) and bool(value)


def _name(check: Callable[[], Any]) -> str:
    return getattr(check, "__qualname__", repr(check))


def _timed_out(what: str, timeout: float, last: Any) -> AssertionError:
    error = AssertionError(f"{what}: not true within {timeout}s; last value: {last!r}")
    if isinstance(last, BaseException):
        error.__cause__ = last
    return error


# -- loopback upstreams --------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIUpstream]:
    """An OpenAI-compatible upstream on its own thread, for a module's stack."""
    with run_in_thread(OpenAIUpstream(api_key=UPSTREAM_KEY)) as server:
        yield server


@pytest.fixture(scope="module")
def gemini_upstream() -> Iterator[GeminiUpstream]:
    """A Gemini API upstream on its own thread, for a module's stack."""
    with run_in_thread(GeminiUpstream(api_key=GEMINI_UPSTREAM_KEY)) as server:
        yield server


class Loopbacks:
    """Upstreams served from the test's own event loop, all stopped at its end."""

    def __init__(self, stack: contextlib.AsyncExitStack) -> None:
        self._stack = stack

    async def openai(
        self, api_key: str | None = UPSTREAM_KEY, *, record_requests: bool = True
    ) -> OpenAIUpstream:
        server = OpenAIUpstream(api_key=api_key, record_requests=record_requests)
        return await self._stack.enter_async_context(server)

    async def gemini(self, api_key: str | None = GEMINI_UPSTREAM_KEY) -> GeminiUpstream:
        return await self._stack.enter_async_context(GeminiUpstream(api_key=api_key))


@pytest_asyncio.fixture
async def clickhouse(tmp_path: Path) -> AsyncIterator[ClickHouse]:
    """An embedded ClickHouse with the usage schema, in the test's folder."""
    async with migrated_clickhouse(tmp_path) as ch:
        yield ch


@pytest_asyncio.fixture
async def loopbacks() -> AsyncIterator[Loopbacks]:
    async with contextlib.AsyncExitStack() as stack:
        yield Loopbacks(stack)


def loopback_provider(
    name: str, upstream: OpenAIUpstream | GeminiUpstream, key_env: str, **options: Any
) -> dict[str, Any]:
    """A stack's provider entry for a loopback upstream; `key_env` names the
    environment variable that hands the provider the upstream's key."""
    kind = "gemini" if isinstance(upstream, GeminiUpstream) else "openai"
    return {
        "name": name,
        "kind": kind,
        "base_url": upstream.base_url,
        "api_key_env": key_env,
        **options,
    }


# -- whole stacks --------------------------------------------------------------

StartStack = Callable[[Mapping[str, Any], Mapping[str, str]], Stack]


@pytest.fixture(scope="module")
def start_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartStack]:
    """Start a whole local stack (Envoy, broker, every service) for the module:
    `start_stack(config, env)`; each is stopped when the module ends."""
    with contextlib.ExitStack() as stacks:

        def start(config: Mapping[str, Any], env: Mapping[str, str]) -> Stack:
            return stacks.enter_context(
                running_stack(config, tmp_path_factory.mktemp("stack"), env)
            )

        yield start
