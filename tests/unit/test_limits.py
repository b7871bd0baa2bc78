"""The in-process limiter and the token estimate."""

from __future__ import annotations

import pytest

from switchboard.common.v1 import openai_pb2
from switchboard_common.errors import SwitchboardError
from switchboard_router.limits import (
    DEFAULT_OUTPUT_RESERVATION,
    LocalLimiter,
    Scope,
    estimate_tokens,
)
from tests.support.limits import take

pytestmark = pytest.mark.asyncio


async def test_rpm_admits_up_to_the_limit_then_refuses_with_retry_after() -> None:
    limiter = LocalLimiter()
    for _ in range(3):
        await take(limiter, "rpm:key a", 3, 1)
    with pytest.raises(SwitchboardError) as err:
        await take(limiter, "rpm:key a", 3, 1)
    assert err.value.reason_name == "RATE_LIMITED"
    assert err.value.retry_after_s is not None
    assert 0 < err.value.retry_after_s <= 60
    assert "key a (RPM)" in err.value.message
    # Other scopes are independent.
    await take(limiter, "rpm:key b", 3, 1)


async def test_tpm_settles_estimates_to_actual_usage() -> None:
    limiter = LocalLimiter()
    first = await take(limiter, "tpm:key a", 1000, 900)
    with pytest.raises(SwitchboardError):
        await take(limiter, "tpm:key a", 1000, 200)
    await limiter.settle([(first, 100)])  # it used far less than reserved
    await take(limiter, "tpm:key a", 1000, 200)


async def test_one_request_larger_than_the_limit_passes_an_empty_window() -> None:
    limiter = LocalLimiter()
    await take(limiter, "tpm:key a", 100, 5000)
    with pytest.raises(SwitchboardError):
        await take(limiter, "tpm:key a", 100, 1)


async def test_released_reservation_frees_its_slot() -> None:
    limiter = LocalLimiter()
    reservation = await take(limiter, "rpm:key a", 1, 1)
    await limiter.settle([(reservation, 0)])
    await take(limiter, "rpm:key a", 1, 1)


async def test_estimate_counts_prompt_and_allowed_output() -> None:
    params = openai_pb2.ChatCompletionParams(model="m", max_tokens=50, n=2)
    params.messages.add(role="user").content.string_value = "x" * 400
    assert 100 + 100 <= estimate_tokens(params) <= 100 + 100 + 30
    params.ClearField("max_tokens")
    assert estimate_tokens(params) >= 2 * DEFAULT_OUTPUT_RESERVATION


async def test_a_phase_takes_all_its_scopes_or_none() -> None:
    limiter = LocalLimiter()
    await take(limiter, "rpm:model full", 1, 1)
    with pytest.raises(SwitchboardError):
        await limiter.acquire([Scope("tpm:key roomy", 10, 6), Scope("rpm:model full", 1, 1)])
    await take(limiter, "tpm:key roomy", 10, 10)  # the refused request's 6 were given back
