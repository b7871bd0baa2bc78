"""Load balancing: the order in which to try a model's deployments.

`Balancer.order` ranks every deployment with a positive weight; the first is the
primary and the rest are the failover order, so a strategy only decides who goes
first and who is next best. Health is not this module's concern: the caller
skips deployments whose circuit breaker refuses them.

`DeploymentStats` holds what the router has observed (requests in flight,
latency and time-to-first-token EWMAs) and is shared by every model, because a
deployment's load and speed do not depend on which alias reached it.

Everything here runs synchronously on the event loop, so no locking.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar


class Strategy(enum.StrEnum):
    WEIGHTED_RANDOM = "weighted_random"
    ROUND_ROBIN = "round_robin"
    PRIORITY = "priority"
    LEAST_LATENCY = "least_latency"
    LEAST_OUTSTANDING = "least_outstanding"
    COST = "cost"


class Balanced(Protocol):
    @property
    def deployment_id(self) -> str: ...

    @property
    def weight(self) -> int: ...

    @property
    def priority(self) -> int: ...

    @property
    def unit_cost(self) -> float: ...


T = TypeVar("T", bound=Balanced)


@dataclass
class _Observed:
    outstanding: int = 0
    latency_s: float | None = None
    ttft_s: float | None = None
    # Outcome of the most recent finished request; None until one finishes.
    last_ok: bool | None = None


class DeploymentStats:
    """Shared observations per deployment id."""

    def __init__(self, alpha: float = 0.3) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self._alpha = alpha
        self._by_id: dict[str, _Observed] = {}

    def started(self, deployment_id: str) -> None:
        self._by_id.setdefault(deployment_id, _Observed()).outstanding += 1

    def finished(
        self, deployment_id: str, *, latency_s: float, ttft_s: float | None, ok: bool
    ) -> None:
        entry = self._by_id.setdefault(deployment_id, _Observed())
        # Clamped: a request started before `forget` dropped the entry still finishes.
        entry.outstanding = max(0, entry.outstanding - 1)
        entry.last_ok = ok
        # A failure is often fast (a 500 in a few ms); counting its latency would
        # make a broken deployment look like the quickest one.
        if ok:
            entry.latency_s = self._ewma(entry.latency_s, latency_s)
        # The first token arrived, so the time to it is real even if the stream later broke.
        if ttft_s is not None:
            entry.ttft_s = self._ewma(entry.ttft_s, ttft_s)

    def outstanding(self, deployment_id: str) -> int:
        entry = self._by_id.get(deployment_id)
        return entry.outstanding if entry else 0

    def latency_s(self, deployment_id: str) -> float | None:
        entry = self._by_id.get(deployment_id)
        return entry.latency_s if entry else None

    def ttft_s(self, deployment_id: str) -> float | None:
        entry = self._by_id.get(deployment_id)
        return entry.ttft_s if entry else None

    def last_ok(self, deployment_id: str) -> bool | None:
        entry = self._by_id.get(deployment_id)
        return entry.last_ok if entry else None

    def forget(self, keep: Iterable[str]) -> None:
        kept = set(keep)
        for deployment_id in [d for d in self._by_id if d not in kept]:
            del self._by_id[deployment_id]

    def _ewma(self, previous: float | None, sample: float) -> float:
        sample = max(0.0, sample)
        if previous is None:
            return sample
        return self._alpha * sample + (1.0 - self._alpha) * previous


@dataclass
class _RoundRobin:
    # Keyed by position, so a config change of the model's deployments resets it.
    ids: tuple[str, ...]
    current: list[int]


class Balancer:
    """Orders a model's deployments by a strategy; keeps round-robin state per model."""

    def __init__(self, stats: DeploymentStats, rng: random.Random | None = None) -> None:
        self.stats = stats
        self._rng = rng or random.Random()  # noqa: S311 - load balancing, not security
        self._round_robin: dict[str, _RoundRobin] = {}
        # Why the last `order` call put its first deployment first; read it right after.
        self.last_reason = ""

    def order(
        self, model: str, strategy: Strategy, deployments: Sequence[T], *, stream: bool = False
    ) -> list[T]:
        strategy = Strategy(strategy)  # so an untyped caller passing the config string works
        pool = [d for d in deployments if d.weight > 0]
        if not pool:
            self.last_reason = f"{strategy.value}: no deployment with weight > 0"
            return []
        ranked, reason = self._rank(model, strategy, pool, stream)
        self.last_reason = f"{strategy.value}: {reason}"
        return ranked

    def forget(self, keep_models: Iterable[str]) -> None:
        """Drop round-robin state of models no longer configured."""
        kept = set(keep_models)
        for model in [m for m in self._round_robin if m not in kept]:
            del self._round_robin[model]

    def _rank(
        self, model: str, strategy: Strategy, pool: list[T], stream: bool
    ) -> tuple[list[T], str]:
        if strategy is Strategy.WEIGHTED_RANDOM:
            ranked = self._weighted_shuffle(pool)
            return ranked, _share(ranked[0], pool)
        if strategy is Strategy.ROUND_ROBIN:
            ranked = self._smooth_round_robin(model, pool)
            return ranked, f"smooth weighted, {_share(ranked[0], pool)}"
        if strategy is Strategy.PRIORITY:
            ranked = self._ranked_by(pool, lambda d: d.priority)
            peers = [d for d in pool if d.priority == ranked[0].priority]
            return ranked, f"priority {ranked[0].priority}, {_share(ranked[0], peers)}"
        if strategy is Strategy.LEAST_OUTSTANDING:
            ranked = self._ranked_by(pool, lambda d: self.stats.outstanding(d.deployment_id))
            return ranked, f"{self.stats.outstanding(ranked[0].deployment_id)} in flight"
        if strategy is Strategy.COST:
            ranked = self._ranked_by(pool, lambda d: d.unit_cost)
            return ranked, f"${ranked[0].unit_cost:g} per 1K tokens"
        return self._least_latency(pool, stream)

    def _least_latency(self, pool: list[T], stream: bool) -> tuple[list[T], str]:
        # A stream's total time mostly measures how much it wrote; what the caller
        # waits on is the first token.
        metric = self.stats.ttft_s if stream else self.stats.latency_s
        label = "ttft" if stream else "latency"

        def key(d: T) -> tuple[int, float]:
            value = metric(d.deployment_id)
            if value is not None:
                return (1, value)
            # Never measured: try it first, or it would never get measured. But one
            # whose last request failed goes last, or a dead deployment (which never
            # yields a measurement) would stay first forever.
            if self.stats.last_ok(d.deployment_id) is False:
                return (2, 0.0)
            return (0, 0.0)

        ranked = self._ranked_by(pool, key)
        value = metric(ranked[0].deployment_id)
        if value is not None:
            return ranked, f"{label} ewma {value * 1000:.1f} ms"
        if key(ranked[0])[0] == 0:
            return ranked, f"no {label} observed yet, exploring"
        return ranked, f"no {label} observed; every deployment's last request failed"

    def _ranked_by(self, pool: list[T], key: Callable[[T], float | tuple[int, float]]) -> list[T]:
        # A weighted shuffle restricted to any subset is a weighted shuffle of that
        # subset, so a stable sort after it breaks ties by weight-random.
        return sorted(self._weighted_shuffle(pool), key=key)

    def _weighted_shuffle(self, pool: list[T]) -> list[T]:
        """Draw without replacement, each draw proportional to weight.

        Integer weights and randrange keep the draws exact, free of float rounding.
        """
        rest = list(pool)
        out: list[T] = []
        total = sum(d.weight for d in rest)
        while rest:
            point = self._rng.randrange(total)
            for i, d in enumerate(rest):
                point -= d.weight
                if point < 0:
                    out.append(rest.pop(i))
                    total -= d.weight
                    break
        return out

    def _smooth_round_robin(self, model: str, pool: list[T]) -> list[T]:
        """nginx's smooth weighted round robin: spread, not bursty (5:1:1 is a a b a c a a)."""
        ids = tuple(d.deployment_id for d in pool)
        state = self._round_robin.get(model)
        if state is None or state.ids != ids:
            state = self._round_robin[model] = _RoundRobin(ids, [0] * len(pool))
        total = 0
        for i, d in enumerate(pool):
            state.current[i] += d.weight
            total += d.weight
        # Ties go to the earlier deployment, as in nginx.
        best = max(range(len(pool)), key=lambda i: (state.current[i], -i))
        state.current[best] -= total
        # Failover goes to whoever is most due next, without advancing the state for them.
        rest = sorted(
            (i for i in range(len(pool)) if i != best), key=lambda i: (-state.current[i], i)
        )
        return [pool[best], *(pool[i] for i in rest)]


def _share(pick: Balanced, among: Sequence[Balanced]) -> str:
    return f"weight {pick.weight} of {sum(d.weight for d in among)}"
