"""The in-process limiter and the token estimate."""

from __future__ import annotations

import pytest

from switchboard.common.v1 import openai_pb2
from switchboard_common.errors import SwitchboardError
from switchboard_router.limits import DEFAULT_OUTPUT_RESERVATION, LocalLimiter, estimate_tokens

pytestmark = pytest.mark.asyncio


async def test_rpm_admits_up_to_the_limit_then_refuses_with_retry_after() -> None:
    limiter = LocalLimiter()
    for _ in range(3):
        await limiter.acquire("rpm:key a", 3, 1)
    with pytest.raises(SwitchboardError) as err:
        await limiter.acquire("rpm:key a", 3, 1)
    assert err.value.reason_name == "RATE_LIMITED"
    assert err.value.retry_after_s is not None
    assert 0 < err.value.retry_after_s <= 60
    assert "key a (RPM)" in err.value.message
    # Other scopes are independent.
    await limiter.acquire("rpm:key b", 3, 1)


async def test_tpm_settles_estimates_to_actual_usage() -> None:
    limiter = LocalLimiter()
    first = await limiter.acquire("tpm:key a", 1000, 900)
    with pytest.raises(SwitchboardError):
        await limiter.acquire("tpm:key a", 1000, 200)
    await limiter.settle(first, 100)  # it used far less than reserved
    await limiter.acquire("tpm:key a", 1000, 200)


async def test_one_request_larger_than_the_limit_passes_an_empty_window() -> None:
    limiter = LocalLimiter()
    await limiter.acquire("tpm:key a", 100, 5000)
    with pytest.raises(SwitchboardError):
        await limiter.acquire("tpm:key a", 100, 1)


async def test_released_reservation_frees_its_slot() -> None:
    limiter = LocalLimiter()
    reservation = await limiter.acquire("rpm:key a", 1, 1)
    await limiter.settle(reservation, 0)
    await limiter.acquire("rpm:key a", 1, 1)


async def test_estimate_counts_prompt_and_allowed_output() -> None:
    params = openai_pb2.ChatCompletionParams(model="m", max_tokens=50, n=2)
    params.messages.add(role="user").content.string_value = "x" * 400
    assert 100 + 100 <= estimate_tokens(params) <= 100 + 100 + 30
    params.ClearField("max_tokens")
    assert estimate_tokens(params) >= 2 * DEFAULT_OUTPUT_RESERVATION
