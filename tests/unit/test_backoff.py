"""Retry delays: full-jitter exponential backoff, Retry-After, and the deadline check."""

from __future__ import annotations

import random
import statistics

import pytest

from switchboard_router.backoff import fits, retry_delay


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 0.2), (2, 0.4), (3, 0.8), (4, 1.6), (5, 2.0), (10, 2.0), (10_000, 2.0)],
)
def test_delay_stays_within_the_capped_exponential_ceiling(attempt: int, ceiling: float) -> None:
    rng = random.Random(attempt)
    delays = [retry_delay(attempt, rng=rng) for _ in range(2_000)]
    assert all(0.0 <= d <= ceiling for d in delays)
    # Full jitter spans the range rather than clustering near the ceiling.
    assert min(delays) < 0.05 * ceiling
    assert max(delays) > 0.95 * ceiling


def test_jitter_is_uniform_over_the_range() -> None:
    rng = random.Random(2024)
    delays = [retry_delay(3, base_s=0.1, cap_s=10.0, rng=rng) for _ in range(10_000)]
    # Uniform on [0, 0.8]: mean 0.4, standard deviation 0.8 / sqrt(12).
    assert statistics.fmean(delays) == pytest.approx(0.4, abs=0.01)
    assert statistics.pstdev(delays) == pytest.approx(0.8 / 12**0.5, abs=0.01)
    # Every tenth of the range gets its share (1,000 expected each).
    deciles = [0] * 10
    for d in delays:
        deciles[min(int(d / 0.08), 9)] += 1
    assert all(850 < n < 1150 for n in deciles)


def test_a_seeded_rng_gives_the_same_delays() -> None:
    first = [retry_delay(a, rng=random.Random(7)) for a in range(1, 6)]
    second = [retry_delay(a, rng=random.Random(7)) for a in range(1, 6)]
    assert first == second
    rng = random.Random(7)
    assert len({retry_delay(2, rng=rng) for _ in range(100)}) == 100


def test_retry_after_is_a_floor_that_the_cap_does_not_lower() -> None:
    rng = random.Random(1)
    for attempt in (1, 3, 8):
        assert retry_delay(attempt, retry_after_s=5.0, rng=rng) == 5.0
    # A Retry-After shorter than the jitter leaves the jitter in charge.
    delays = [retry_delay(4, retry_after_s=0.1, rng=rng) for _ in range(1_000)]
    assert all(0.1 <= d <= 1.6 for d in delays)
    assert max(delays) > 1.0


def test_a_zero_cap_or_base_means_no_wait() -> None:
    rng = random.Random(0)
    assert retry_delay(3, cap_s=0.0, rng=rng) == 0.0
    assert retry_delay(3, base_s=0.0, rng=rng) == 0.0


@pytest.mark.parametrize(
    ("attempt", "kwargs"),
    [(0, {}), (-1, {}), (1, {"base_s": -0.1}), (1, {"cap_s": -1.0})],
)
def test_rejects_nonsense_arguments(attempt: int, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"attempt|must not be negative"):
        retry_delay(attempt, rng=random.Random(0), **kwargs)


def test_fits_without_a_deadline() -> None:
    assert fits(100.0, None)


@pytest.mark.parametrize(
    ("delay", "remaining", "reserve", "expected"),
    [
        (0.5, 2.0, 0.05, True),
        (1.9, 2.0, 0.05, True),
        (1.95, 2.0, 0.05, False),  # exactly the reserve left is not enough
        (2.5, 2.0, 0.05, False),
        (0.0, 0.0, 0.05, False),
        (0.0, 0.01, 0.0, True),
        (0.0, -1.0, 0.05, False),  # already past the deadline
        (1.0, 1.6, 0.5, True),
        (1.0, 1.4, 0.5, False),
    ],
)
def test_fits_leaves_the_reserve_for_the_attempt(
    delay: float, remaining: float, reserve: float, expected: bool
) -> None:
    assert fits(delay, remaining, reserve_s=reserve) is expected
