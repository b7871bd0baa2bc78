"""The provider embedded in the router fails, times out and cancels as its stub
would; the calls themselves are tested end to end, in both placements, by
tests/integration/test_router_provider.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from switchboard.provider.v1 import provider_pb2
from switchboard_common.errors import R, SwitchboardError
from switchboard_router.embedded_provider import EmbeddedProvider

pytestmark = pytest.mark.asyncio


class Servicer:
    """Stands in for the provider's servicer: these tests are about the
    embedding, not about what the provider does."""

    def __init__(self) -> None:
        self.left_s: float | None = None
        self.closed = asyncio.Event()
        self.failure: BaseException | None = None

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        self.left_s = context.time_remaining()
        if self.failure is not None:
            raise self.failure
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def StreamGenerate(
        self, request: Any, context: Any
    ) -> AsyncIterator[provider_pb2.StreamGenerateResponse]:
        try:
            for index in range(3):
                yield provider_pb2.StreamGenerateResponse(pseudo_stream=bool(index))
            if self.failure is not None:
                raise self.failure
        finally:
            self.closed.set()


async def embedded() -> tuple[EmbeddedProvider, Servicer]:
    provider = EmbeddedProvider()
    await provider.close()
    servicer = Servicer()
    provider.servicer = servicer  # type: ignore[assignment]
    return provider, servicer


async def test_a_switchboard_error_passes_as_it_is() -> None:
    provider, servicer = await embedded()
    servicer.failure = SwitchboardError(R.ERROR_REASON_RATE_LIMITED, "slow down")
    with pytest.raises(SwitchboardError) as err:
        await provider.Generate(provider_pb2.GenerateRequest(), timeout=5)
    assert err.value is servicer.failure


async def test_an_unexpected_error_is_internal_and_its_text_stays_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider, servicer = await embedded()
    servicer.failure = RuntimeError("key sk-do-not-send")
    with caplog.at_level(logging.ERROR), pytest.raises(SwitchboardError) as err:
        await provider.Generate(provider_pb2.GenerateRequest(), timeout=5)
    assert err.value.reason == R.ERROR_REASON_INTERNAL
    assert "sk-do-not-send" not in str(err.value)
    assert "unhandled error in provider Generate" in caplog.text


async def test_the_timeout_is_the_provider_deadline_and_bounds_the_call() -> None:
    provider, servicer = await embedded()
    with pytest.raises(SwitchboardError) as err:
        await provider.Generate(provider_pb2.GenerateRequest(), timeout=0.05)
    assert err.value.reason == R.ERROR_REASON_UPSTREAM_TIMEOUT
    assert servicer.left_s is not None
    assert 0 < servicer.left_s <= 0.05


async def test_no_timeout_leaves_the_provider_without_a_deadline() -> None:
    provider, servicer = await embedded()
    servicer.failure = SwitchboardError(R.ERROR_REASON_UPSTREAM_ERROR, "no")
    with pytest.raises(SwitchboardError):
        await provider.Generate(provider_pb2.GenerateRequest())
    assert servicer.left_s is None


async def test_a_stream_ends_with_its_failure_mapped() -> None:
    provider, servicer = await embedded()
    servicer.failure = ValueError("boom")
    call = provider.StreamGenerate(provider_pb2.StreamGenerateRequest(), timeout=5)
    events: list[provider_pb2.StreamGenerateResponse] = []
    with pytest.raises(SwitchboardError) as err:
        async for event in call:
            events.append(event)
    assert len(events) == 3
    assert err.value.reason == R.ERROR_REASON_INTERNAL
    assert call.cancel() is False  # already over


async def test_cancel_closes_the_provider_generator() -> None:
    provider, servicer = await embedded()
    call = provider.StreamGenerate(provider_pb2.StreamGenerateRequest(), timeout=5)
    await anext(aiter(call))
    assert not servicer.closed.is_set()
    assert call.cancel() is True
    async with asyncio.timeout(2):
        await servicer.closed.wait()
    assert call.cancel() is False


async def test_only_the_services_methods_exist() -> None:
    provider, _ = await embedded()
    with pytest.raises(AttributeError):
        provider.NotAMethod  # noqa: B018
