"""A request's own rate limits (its key's and model's) ride on its first
attempt: one round trip to the limit store takes them with the deployment's.
Whose limit refused still decides what happens, and a request that reaches no
attempt still meets its own limit first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from switchboard_common.config import SwitchboardConfig
from switchboard_common.errors import R, SwitchboardError
from switchboard_router.accounting import Accounting
from switchboard_router.admission import Admission
from switchboard_router.attempts import Attempts, Generation
from switchboard_router.budgets import Budgets
from switchboard_router.catalog import Candidate, Catalog
from switchboard_router.limits import LimitReached, LocalLimiter, Reservation, Scope
from switchboard_router.routing import Routing

pytestmark = pytest.mark.asyncio

MODEL_RPM = Scope("rpm:model m", 1, 1)


class CountingLimiter(LocalLimiter):
    """The in-process limiter, counting its calls: one call is one round trip
    to Redis for the shared limiter."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[str]] = []

    async def acquire(self, scopes: Sequence[Scope]) -> list[Reservation]:
        if scopes:
            self.calls.append([s.name for s in scopes])
        return await super().acquire(scopes)


def _catalog(deployment_rpm: int | None = None, weights: tuple[int, ...] = (1,)) -> Catalog:
    deployments: list[dict[str, Any]] = [
        {"provider": "p", "model": f"up{i}", "weight": w, "rpm": deployment_rpm}
        for i, w in enumerate(weights)
    ]
    config = SwitchboardConfig.model_validate(
        {
            "providers": [{"name": "p", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"}],
            "models": [{"name": "m", "rpm": 1, "deployments": deployments}],
        }
    )
    return Catalog(config, created=0)


def _admission(catalog: Catalog) -> tuple[Admission, list[Candidate]]:
    model = catalog.resolve("m", None)
    admission = Admission(None, model, catalog, estimate=10, unreserved=[MODEL_RPM])
    return admission, catalog.candidates(model)


async def test_the_first_attempt_takes_the_requests_limits_in_one_round_trip() -> None:
    limiter = CountingLimiter()
    admission, (candidate,) = _admission(_catalog(deployment_rpm=5))
    routing = Routing(limiter)
    refused = await routing.acquire(candidate, 10, admission.reservations, admission.unreserved)
    assert refused is None
    assert limiter.calls == [["rpm:model m", f"rpm:deployment {candidate.deployment_id}"]]
    assert admission.unreserved == []
    assert [r.scope for r in admission.reservations] == limiter.calls[0]
    # A second attempt of the same request takes only its deployment's.
    assert (
        await routing.acquire(candidate, 10, admission.reservations, admission.unreserved) is None
    )
    assert limiter.calls[1] == [f"rpm:deployment {candidate.deployment_id}"]


async def test_the_requests_own_limit_refuses_the_request() -> None:
    limiter = CountingLimiter()
    catalog = _catalog(deployment_rpm=5)
    first, (candidate,) = _admission(catalog)
    await Routing(limiter).reserve(first.reservations, first.unreserved)
    second, _ = _admission(catalog)
    routing = Routing(limiter)
    with pytest.raises(LimitReached) as caught:
        await routing.acquire(candidate, 10, second.reservations, second.unreserved)
    assert caught.value.scope == "rpm:model m"
    assert caught.value.reason == R.ERROR_REASON_RATE_LIMITED
    # Refused in that one round trip: nothing asked again.
    assert limiter.calls[-1] == ["rpm:model m", f"rpm:deployment {candidate.deployment_id}"]
    assert second.reservations == []
    # The deployment's slot it took in the same round trip was given back.
    third = Admission(None, candidate.model, catalog)
    for _ in range(5):
        assert await routing.acquire(candidate, 10, third.reservations) is None


async def test_a_deployments_limit_skips_it_and_keeps_the_requests_own() -> None:
    limiter = CountingLimiter()
    catalog = _catalog(deployment_rpm=1, weights=(1, 1))
    admission, candidates = _admission(catalog)
    full = candidates[0]
    other = Admission(None, full.model, catalog)
    assert await Routing(limiter).acquire(full, 10, other.reservations) is None
    limiter.calls.clear()
    routing = Routing(limiter)
    refused = await routing.acquire(full, 10, admission.reservations, admission.unreserved)
    assert isinstance(refused, LimitReached)
    assert refused.scope == f"rpm:deployment {full.deployment_id}"
    # Then the request's own limit alone: reserved, not carried to the next one.
    assert limiter.calls[-1] == ["rpm:model m"]
    assert [r.scope for r in admission.reservations] == ["rpm:model m"]
    assert admission.unreserved == []
    nxt = candidates[1]
    assert await routing.acquire(nxt, 10, admission.reservations, admission.unreserved) is None
    assert limiter.calls[-1] == [f"rpm:deployment {nxt.deployment_id}"]


async def test_a_cooling_deployment_leaves_the_requests_limits_for_the_next() -> None:
    limiter = CountingLimiter()
    admission, (candidate,) = _admission(_catalog())
    routing = Routing(limiter)
    for _ in range(routing.breakers.config.consecutive_failures):
        routing.breakers.record(candidate.deployment_id, ok=False)
    refused = await routing.acquire(candidate, 10, admission.reservations, admission.unreserved)
    assert refused is not None
    assert refused.reason == R.ERROR_REASON_NO_HEALTHY_DEPLOYMENT
    assert limiter.calls == []
    assert admission.unreserved == [MODEL_RPM]


async def test_no_deployment_to_try_still_meets_the_requests_limit_first() -> None:
    """No attempt: the request's own limit is reserved alone, and its 429 is
    the answer before 'no deployment can serve it' (as when admission took it)."""
    limiter = CountingLimiter()
    catalog = _catalog(weights=(0,))
    routing = Routing(limiter)
    attempts = Attempts(routing, _accounting(limiter), max_attempts=3)
    exchange = Generation(None, "chat", None, stream=False)  # type: ignore[arg-type]
    first, _ = _admission(catalog)
    with pytest.raises(SwitchboardError) as caught:
        async for _ in attempts.run(None, first, "m", exchange):  # type: ignore[arg-type]
            pass
    assert caught.value.reason == R.ERROR_REASON_NO_HEALTHY_DEPLOYMENT
    assert [r.scope for r in first.reservations] == ["rpm:model m"]
    second, _ = _admission(catalog)
    with pytest.raises(SwitchboardError) as caught:
        async for _ in attempts.run(None, second, "m", exchange):  # type: ignore[arg-type]
            pass
    assert caught.value.reason == R.ERROR_REASON_RATE_LIMITED


def _accounting(limiter: LocalLimiter) -> Accounting:
    return Accounting(None, limiter, Budgets(None), instance="test")  # type: ignore[arg-type]
