"""Per-deployment circuit breakers, driven by a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from switchboard_router.breaker import BreakerBoard, BreakerConfig, State


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _board(
    clock: FakeClock, transitions: list[tuple[str, State, State]] | None = None, **config: Any
) -> BreakerBoard:
    def on_transition(deployment_id: str, old: State, new: State) -> None:
        if transitions is not None:
            transitions.append((deployment_id, old, new))

    return BreakerBoard(BreakerConfig(**config), clock, on_transition=on_transition)


def _fail(board: BreakerBoard, deployment_id: str, times: int) -> None:
    for _ in range(times):
        assert board.allow(deployment_id)
        board.record(deployment_id, False)


def _trip(board: BreakerBoard, deployment_id: str = "d") -> None:
    _fail(board, deployment_id, board.config.consecutive_failures)
    assert board.state(deployment_id) is State.OPEN


def test_an_unknown_deployment_is_closed_and_allowed() -> None:
    board = _board(FakeClock())
    assert board.state("d") is State.CLOSED
    assert board.allow("d")
    assert board.snapshot() == {}


def test_opens_after_consecutive_failures() -> None:
    board = _board(FakeClock(), consecutive_failures=3)
    _fail(board, "d", 2)
    assert board.state("d") is State.CLOSED
    _fail(board, "d", 1)
    assert board.state("d") is State.OPEN
    assert not board.allow("d")
    # Other deployments are unaffected.
    assert board.allow("e")


def test_a_success_resets_the_consecutive_run() -> None:
    board = _board(FakeClock(), consecutive_failures=3)
    for _ in range(5):
        _fail(board, "d", 2)
        board.record("d", True)
    assert board.state("d") is State.CLOSED


def test_opens_on_error_rate_once_min_requests_are_in_the_window() -> None:
    clock = FakeClock()
    board = _board(clock, consecutive_failures=100, error_rate=0.3, min_requests=10)
    # 7 successes and 2 failures: 9 requests, below min_requests.
    for ok in [True, False, True, True, False, True, True, True, True]:
        board.record("d", ok)
        clock.advance(0.5)
    assert board.state("d") is State.CLOSED
    # The 10th request fails: 3 of 10 reaches the 0.3 rate.
    board.record("d", False)
    assert board.state("d") is State.OPEN


def test_does_not_open_below_min_requests_even_at_full_error_rate() -> None:
    board = _board(FakeClock(), consecutive_failures=100, error_rate=0.5, min_requests=20)
    _fail(board, "d", 19)
    assert board.state("d") is State.CLOSED
    _fail(board, "d", 1)
    assert board.state("d") is State.OPEN


def test_does_not_open_when_the_rate_stays_below_the_threshold() -> None:
    board = _board(FakeClock(), consecutive_failures=100, error_rate=0.5, min_requests=10)
    for _ in range(50):
        board.record("d", False)
        board.record("d", True)
        board.record("d", True)
    assert board.state("d") is State.CLOSED


def test_failures_outside_the_window_no_longer_count() -> None:
    clock = FakeClock()
    board = _board(clock, consecutive_failures=100, error_rate=0.5, min_requests=10, window_s=30)
    for _ in range(9):
        board.record("d", False)
    # Those nine age out; the next nine failures alone are below min_requests.
    clock.advance(31)
    for _ in range(9):
        board.record("d", False)
    assert board.state("d") is State.CLOSED
    board.record("d", False)
    assert board.state("d") is State.OPEN


def test_half_open_after_cooldown_admits_exactly_the_probe_count() -> None:
    clock = FakeClock()
    board = _board(clock, consecutive_failures=2, cooldown_s=30, half_open_probes=2)
    _trip(board)
    clock.advance(29.9)
    assert not board.allow("d")
    assert board.state("d") is State.OPEN
    clock.advance(0.1)
    assert board.state("d") is State.HALF_OPEN
    assert board.allow("d")
    assert board.allow("d")
    assert not board.allow("d")
    assert not board.allow("d")


def test_probe_success_closes() -> None:
    clock = FakeClock()
    board = _board(clock, consecutive_failures=2, cooldown_s=10)
    _trip(board)
    clock.advance(10)
    assert board.allow("d")
    board.record("d", True)
    assert board.state("d") is State.CLOSED
    assert board.allow("d")
    # Closed again with a clean slate: it takes a full run to trip it again.
    _fail(board, "d", 1)
    assert board.state("d") is State.CLOSED


def test_closing_can_need_several_probe_successes() -> None:
    clock = FakeClock()
    board = _board(clock, consecutive_failures=1, cooldown_s=10, success_to_close=3)
    _trip(board)
    clock.advance(10)
    for _ in range(2):
        assert board.allow("d")
        assert not board.allow("d")  # one probe at a time
        board.record("d", True)
        assert board.state("d") is State.HALF_OPEN
    assert board.allow("d")
    board.record("d", True)
    assert board.state("d") is State.CLOSED


def test_probe_failure_reopens_for_a_full_cooldown() -> None:
    clock = FakeClock()
    board = _board(clock, consecutive_failures=2, cooldown_s=30)
    _trip(board)
    clock.advance(45)
    assert board.allow("d")
    board.record("d", False)
    assert board.state("d") is State.OPEN
    clock.advance(29)
    assert not board.allow("d")
    clock.advance(1)
    assert board.allow("d")
    assert board.state("d") is State.HALF_OPEN


def test_release_frees_a_probe_slot_without_a_verdict() -> None:
    clock = FakeClock()
    board = _board(clock, consecutive_failures=2, cooldown_s=5)
    _trip(board)
    clock.advance(5)
    assert board.allow("d")
    assert not board.allow("d")
    board.release("d")
    assert board.state("d") is State.HALF_OPEN
    assert board.allow("d")
    board.record("d", True)
    assert board.state("d") is State.CLOSED


def test_release_when_closed_or_unknown_changes_nothing() -> None:
    board = _board(FakeClock(), consecutive_failures=2)
    board.release("never-seen")
    _fail(board, "d", 1)
    board.release("d")
    _fail(board, "d", 1)
    assert board.state("d") is State.OPEN


def test_late_results_while_open_or_with_no_probe_out_are_ignored() -> None:
    clock = FakeClock()
    board = _board(clock, consecutive_failures=2, cooldown_s=10)
    _trip(board)
    # Requests admitted before it opened finish now: the cooldown stands.
    board.record("d", True)
    board.record("d", True)
    assert board.state("d") is State.OPEN
    clock.advance(10)
    # Half-open with no probe out: a straggler's verdict is not a probe's.
    board.record("d", True)
    board.record("d", False)
    assert board.state("d") is State.HALF_OPEN
    assert board.allow("d")


def test_transitions_callback_sees_each_change_once() -> None:
    clock = FakeClock()
    transitions: list[tuple[str, State, State]] = []
    board = _board(clock, transitions, consecutive_failures=1, cooldown_s=10)
    _trip(board)
    clock.advance(10)
    assert board.allow("d")
    board.record("d", False)
    clock.advance(10)
    assert board.state("d") is State.HALF_OPEN
    assert board.allow("d")
    board.record("d", True)
    assert transitions == [
        ("d", State.CLOSED, State.OPEN),
        ("d", State.OPEN, State.HALF_OPEN),
        ("d", State.HALF_OPEN, State.OPEN),
        ("d", State.OPEN, State.HALF_OPEN),
        ("d", State.HALF_OPEN, State.CLOSED),
    ]


def test_snapshot_reports_every_known_deployment() -> None:
    clock = FakeClock()
    board = _board(clock, consecutive_failures=1, cooldown_s=10)
    board.record("fine", True)
    _trip(board, "down")
    _trip(board, "recovering")
    clock.advance(10)
    _trip(board, "down-again")
    assert board.snapshot() == {
        "fine": State.CLOSED,
        "down": State.HALF_OPEN,
        "recovering": State.HALF_OPEN,
        "down-again": State.OPEN,
    }


def test_forget_drops_unconfigured_deployments() -> None:
    board = _board(FakeClock(), consecutive_failures=1)
    _trip(board, "gone")
    _trip(board, "kept")
    board.forget(["kept"])
    assert board.snapshot() == {"kept": State.OPEN}
    assert board.state("gone") is State.CLOSED
    assert board.allow("gone")


def test_uses_the_monotonic_clock_by_default() -> None:
    board = BreakerBoard(BreakerConfig(consecutive_failures=1, cooldown_s=3600))
    board.record("d", False)
    assert not board.allow("d")


@pytest.mark.parametrize(
    "config",
    [
        {"consecutive_failures": 0},
        {"error_rate": 0.0},
        {"error_rate": 1.5},
        {"min_requests": 0},
        {"window_s": 0},
        {"cooldown_s": -1},
        {"half_open_probes": 0},
        {"success_to_close": 0},
    ],
)
def test_config_rejects_nonsense(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        BreakerConfig(**config)
