"""One scope through a limiter's all-or-nothing API, for tests about one scope."""

from __future__ import annotations

from switchboard_router.limits import Limiter, Reservation, Scope


async def take(limiter: Limiter, scope: str, limit: int, cost: int) -> Reservation:
    (reservation,) = await limiter.acquire([Scope(scope, limit, cost)])
    return reservation
