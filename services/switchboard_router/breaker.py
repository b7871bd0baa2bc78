"""Circuit breakers, one per deployment.

A deployment that keeps failing is taken out of rotation (open) instead of
costing every request a failed attempt first. After a cooldown a few trial
requests (half-open probes) decide whether it is back (closed) or not (open for
another full cooldown).

It trips on either signal: a run of consecutive failures catches a deployment
that went down outright, within a few requests; the error rate over a rolling
window catches one that fails intermittently, which would rarely fail N in a
row. `min_requests` keeps a handful of requests on a quiet deployment from
tripping it on rate alone.

The caller decides what counts as the deployment's fault (a 5xx or a timeout,
not a client's invalid request) and passes only a verdict here. Time comes from
an injected monotonic clock; everything runs on the event loop, so no locking.
"""

from __future__ import annotations

import enum
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

# The window is kept as this many buckets (one second each for a 30 s window),
# so memory per deployment is bounded however busy it is.
_BUCKETS = 30


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerConfig:
    consecutive_failures: int = 5
    error_rate: float = 0.5
    min_requests: int = 20
    window_s: float = 30.0
    cooldown_s: float = 30.0
    half_open_probes: int = 1
    success_to_close: int = 1

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1:
            raise ValueError("consecutive_failures must be at least 1")
        if not 0.0 < self.error_rate <= 1.0:
            raise ValueError("error_rate must be in (0, 1]")
        if self.min_requests < 1:
            raise ValueError("min_requests must be at least 1")
        if self.window_s <= 0:
            raise ValueError("window_s must be positive")
        if self.cooldown_s < 0:
            raise ValueError("cooldown_s must not be negative")
        if self.half_open_probes < 1:
            raise ValueError("half_open_probes must be at least 1")
        if self.success_to_close < 1:
            raise ValueError("success_to_close must be at least 1")


Transition = Callable[[str, State, State], None]


@dataclass
class _Bucket:
    index: int
    requests: int = 0
    failures: int = 0


@dataclass
class _Breaker:
    state: State = State.CLOSED
    consecutive: int = 0
    buckets: deque[_Bucket] = field(default_factory=deque)
    requests: int = 0
    failures: int = 0
    opened_at: float = 0.0
    probes_in_flight: int = 0
    probe_successes: int = 0

    def reset_counts(self) -> None:
        self.consecutive = 0
        self.buckets.clear()
        self.requests = 0
        self.failures = 0
        self.probes_in_flight = 0
        self.probe_successes = 0


class BreakerBoard:
    """The breakers of every deployment; a deployment never seen is closed."""

    def __init__(
        self,
        config: BreakerConfig,
        clock: Callable[[], float] = time.monotonic,
        *,
        on_transition: Transition | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._on_transition = on_transition
        self._bucket_s = config.window_s / _BUCKETS
        self._by_id: dict[str, _Breaker] = {}

    def allow(self, deployment_id: str) -> bool:
        breaker = self._by_id.get(deployment_id)
        if breaker is None:
            return True
        self._advance(deployment_id, breaker)
        if breaker.state is State.CLOSED:
            return True
        if breaker.state is State.OPEN:
            return False
        if breaker.probes_in_flight < self.config.half_open_probes:
            breaker.probes_in_flight += 1
            return True
        return False

    def record(self, deployment_id: str, ok: bool) -> None:
        breaker = self._by_id.setdefault(deployment_id, _Breaker())
        self._advance(deployment_id, breaker)
        if breaker.state is State.CLOSED:
            self._count(deployment_id, breaker, ok)
        elif breaker.state is State.HALF_OPEN:
            # With no probe out, this is a request admitted before the breaker
            # opened that finished late: it says nothing about the deployment now.
            # (With a probe out the two cannot be told apart; its verdict is taken.)
            if breaker.probes_in_flight == 0:
                return
            breaker.probes_in_flight -= 1
            if not ok:
                self._open(deployment_id, breaker)
                return
            breaker.probe_successes += 1
            if breaker.probe_successes >= self.config.success_to_close:
                breaker.reset_counts()
                self._move(deployment_id, breaker, State.CLOSED)
        # Open: a late result of a request admitted before it opened; the cooldown stands.

    def release(self, deployment_id: str) -> None:
        breaker = self._by_id.get(deployment_id)
        if breaker is None:
            return
        self._advance(deployment_id, breaker)
        if breaker.state is State.HALF_OPEN and breaker.probes_in_flight > 0:
            breaker.probes_in_flight -= 1

    def state(self, deployment_id: str) -> State:
        breaker = self._by_id.get(deployment_id)
        if breaker is None:
            return State.CLOSED
        self._advance(deployment_id, breaker)
        return breaker.state

    def snapshot(self) -> dict[str, State]:
        # A copy of the keys: reading a state may fire the transition callback.
        return {deployment_id: self.state(deployment_id) for deployment_id in list(self._by_id)}

    def forget(self, keep: Iterable[str]) -> None:
        kept = set(keep)
        for deployment_id in [d for d in self._by_id if d not in kept]:
            del self._by_id[deployment_id]

    def _count(self, deployment_id: str, breaker: _Breaker, ok: bool) -> None:
        index = math.floor(self._clock() / self._bucket_s)
        while breaker.buckets and breaker.buckets[0].index <= index - _BUCKETS:
            old = breaker.buckets.popleft()
            breaker.requests -= old.requests
            breaker.failures -= old.failures
        if not breaker.buckets or breaker.buckets[-1].index != index:
            breaker.buckets.append(_Bucket(index))
        bucket = breaker.buckets[-1]
        bucket.requests += 1
        breaker.requests += 1
        if ok:
            breaker.consecutive = 0
            return
        bucket.failures += 1
        breaker.failures += 1
        breaker.consecutive += 1
        # Trips only on a failure: a success should never be what opens a breaker.
        if breaker.consecutive >= self.config.consecutive_failures or (
            breaker.requests >= self.config.min_requests
            and breaker.failures / breaker.requests >= self.config.error_rate
        ):
            self._open(deployment_id, breaker)

    def _open(self, deployment_id: str, breaker: _Breaker) -> None:
        # The failures that tripped it are spent: once closed again it starts clean.
        breaker.reset_counts()
        breaker.opened_at = self._clock()
        self._move(deployment_id, breaker, State.OPEN)

    def _advance(self, deployment_id: str, breaker: _Breaker) -> None:
        """Open turns half-open once the cooldown is over, whoever asks first."""
        if (
            breaker.state is State.OPEN
            and self._clock() - breaker.opened_at >= self.config.cooldown_s
        ):
            breaker.probes_in_flight = 0
            breaker.probe_successes = 0
            self._move(deployment_id, breaker, State.HALF_OPEN)

    def _move(self, deployment_id: str, breaker: _Breaker, new: State) -> None:
        old = breaker.state
        breaker.state = new
        if old is not new and self._on_transition is not None:
            self._on_transition(deployment_id, old, new)
