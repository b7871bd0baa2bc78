"""How long to wait before retrying an upstream, and whether the deadline allows it."""

from __future__ import annotations

import random

# 2**62 times any sane base is far past any cap; the bound keeps a huge attempt
# number from overflowing the float conversion.
_MAX_DOUBLINGS = 62


def retry_delay(
    attempt: int,
    *,
    base_s: float = 0.1,
    cap_s: float = 2.0,
    retry_after_s: float | None = None,
    rng: random.Random,
) -> float:
    """Seconds to wait before retry number `attempt` (1 = the first retry).

    Full jitter, uniform in [0, min(cap_s, base_s * 2**attempt)]: retries from
    many requests that failed together spread out instead of arriving in waves.
    An upstream's Retry-After is a floor that the cap does not lower; whether it
    fits in the request's deadline is for `fits` to say.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts retries from 1, got {attempt}")
    if base_s < 0 or cap_s < 0:
        raise ValueError("base_s and cap_s must not be negative")
    ceiling = min(cap_s, base_s * (1 << min(attempt, _MAX_DOUBLINGS)))
    delay = rng.uniform(0.0, ceiling)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return delay


def fits(delay_s: float, remaining_s: float | None, *, reserve_s: float = 0.05) -> bool:
    """Whether waiting delay_s still leaves more than reserve_s for the attempt itself.

    remaining_s None means no deadline.
    """
    if remaining_s is None:
        return True
    return delay_s + reserve_s < remaining_s
