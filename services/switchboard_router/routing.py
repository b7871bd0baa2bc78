"""Per-process routing state: which deployment to try next, and what the
router has learnt about each one (load, speed, circuit breaker).

The plan is the model's deployments in its strategy's order, then each
fallback model's. An attempt needs its deployment's breaker to admit it and its
per-deployment limits to have room; a deployment that refuses is skipped, not
waited for. What counts against a breaker is the deployment's own failure
(5xx, timeout, 429, bad upstream credentials), never the caller's mistake."""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from switchboard_common.config import ModelConfig
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.gpu_health import Condition, GpuHealthBoard
from switchboard_common.logs import log_fields
from switchboard_router.balancing import Balancer, DeploymentStats, Strategy
from switchboard_router.breaker import BreakerBoard, BreakerConfig, State
from switchboard_router.catalog import Candidate, Catalog
from switchboard_router.limits import Limiter, LimitReached, Reservation, Scope

log = logging.getLogger(__name__)

# Errors that are the deployment's fault: they count against its breaker.
FAULTS = frozenset(
    {
        R.ERROR_REASON_UPSTREAM_ERROR,
        R.ERROR_REASON_UPSTREAM_TIMEOUT,
        R.ERROR_REASON_UPSTREAM_RATE_LIMITED,
        R.ERROR_REASON_UPSTREAM_AUTH,
    }
)
# Errors after which another deployment may well succeed.
FAILOVER = frozenset(
    {
        R.ERROR_REASON_UPSTREAM_ERROR,
        R.ERROR_REASON_UPSTREAM_TIMEOUT,
        R.ERROR_REASON_UPSTREAM_RATE_LIMITED,
        R.ERROR_REASON_SERVICE_UNAVAILABLE,
    }
)
# Errors worth trying the same deployments again for, after a backoff. A timeout
# is not: it already spent its deployment's whole timeout.
RETRY_AGAIN = frozenset(
    {
        R.ERROR_REASON_UPSTREAM_ERROR,
        R.ERROR_REASON_UPSTREAM_RATE_LIMITED,
        R.ERROR_REASON_SERVICE_UNAVAILABLE,
    }
)

BREAKER_STATE = Gauge(
    "switchboard_deployment_breaker_state",
    "Circuit breaker per deployment: 0 closed, 1 half-open, 2 open.",
    ["deployment"],
)
BREAKER_TRANSITIONS = Counter(
    "switchboard_deployment_breaker_transitions_total",
    "Circuit breaker state changes per deployment.",
    ["deployment", "to"],
)
OUTSTANDING = Gauge(
    "switchboard_deployment_outstanding_requests",
    "Attempts in flight per deployment.",
    ["deployment"],
)
ATTEMPTS = Counter(
    "switchboard_deployment_attempts_total",
    "Upstream attempts per deployment and outcome.",
    ["deployment", "outcome"],
)
_STATE_VALUE = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}


@dataclass(frozen=True)
class DeploymentHealth:
    candidate: Candidate
    state: State
    outstanding: int
    latency_s: float | None
    ttft_s: float | None


class Routing:
    def __init__(
        self,
        limiter: Limiter,
        breaker: BreakerConfig | None = None,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limiter = limiter
        # GPU state for deployments bound to a GPU; None until one is configured.
        self.gpu: GpuHealthBoard | None = None
        self.stats = DeploymentStats()
        self.balancer = Balancer(self.stats, rng)
        self._breaker_base = breaker or BreakerConfig()
        self.breakers = BreakerBoard(self._breaker_base, clock, on_transition=self._transition)
        self._clock = clock

    def tune(self, failure_threshold: int | None, recovery_threshold: int | None) -> None:
        """The registry's breaker thresholds (its load-balancing setting), over
        the environment's: failures in a row to open, probe successes to close."""
        base = self._breaker_base
        self.breakers.config = dataclasses.replace(
            base,
            consecutive_failures=failure_threshold or base.consecutive_failures,
            success_to_close=recovery_threshold or base.success_to_close,
        )

    def plan(
        self, catalog: Catalog, model: ModelConfig, stream: bool
    ) -> tuple[list[Candidate], list[str]]:
        """Every deployment to try, in order: the model's, then each fallback's;
        and why the order departs from the strategy's (GPU state), if it does."""
        order: list[Candidate] = []
        notes: list[str] = []
        for m in catalog.with_fallbacks(model):
            candidates = catalog.candidates(m, "" if m is model else model.name)
            ranked = self.balancer.order(m.name, Strategy(m.strategy), candidates, stream=stream)
            if self.gpu is not None:
                ranked = self._gpu_aware(ranked, notes)
            order += ranked
        if notes:
            order = [dataclasses.replace(c, route_notes=tuple(notes)) for c in order]
        return order, notes

    def _gpu_aware(self, ranked: list[Candidate], notes: list[str]) -> list[Candidate]:
        """Self-hosted deployments bound to a GPU: exclude one whose GPU is
        unhealthy, move one whose GPU is saturated or alerting behind the rest.
        No news from a GPU is no reason to stop serving on it."""
        assert self.gpu is not None
        usable: list[Candidate] = []
        later: list[Candidate] = []
        for candidate in ranked:
            deployment = candidate.deployment
            if not deployment.gpu_node:
                usable.append(candidate)
                continue
            verdict = self.gpu.verdict(deployment.gpu_node, deployment.gpu_uuid)
            if verdict.condition is Condition.UNHEALTHY:
                notes.append(f"excluded {candidate.deployment_id}: {verdict.reason}")
            elif verdict.condition is Condition.SATURATED:
                notes.append(f"deprioritised {candidate.deployment_id}: {verdict.reason}")
                later.append(candidate)
            else:
                usable.append(candidate)
        return usable + later

    async def acquire(
        self,
        candidate: Candidate,
        tokens: int,
        reservations: list[Reservation],
        unreserved: list[Scope] | None = None,
    ) -> SwitchboardError | None:
        """Admit an attempt on `candidate`, or say why not (and take nothing of
        its own). `unreserved`: the request's own limits, not yet reserved; they
        go in the same round trip to the limit store, first (so theirs is the
        refusal when both are full), and the list is emptied once they are taken.
        Their refusal is raised: the request is over. The deployment's is
        returned, and the request's own limits are then taken alone."""
        deployment = candidate.deployment_id
        if not self.breakers.allow(deployment):
            return SwitchboardError(
                R.ERROR_REASON_NO_HEALTHY_DEPLOYMENT,
                f"deployment {deployment!r} is cooling down after repeated failures",
            )
        carried = unreserved if unreserved is not None else []
        scopes = [
            Scope(name, limit, cost)
            for name, limit, cost in (
                (f"rpm:deployment {deployment}", candidate.deployment.rpm, 1),
                (f"tpm:deployment {deployment}", candidate.deployment.tpm, tokens),
            )
            if limit
        ]
        try:
            taken = await self.limiter.acquire([*carried, *scopes])
        except SwitchboardError as refused:
            self.breakers.release(deployment)
            # Anything but the deployment's own limit (the request's limit, a
            # limit store that cannot answer) is the whole request's.
            own = isinstance(refused, LimitReached) and refused.scope in {s.name for s in scopes}
            if carried and not own:
                raise
            if carried:
                await self.reserve(reservations, carried)
            return refused
        reservations += taken
        carried.clear()
        return None

    async def reserve(self, reservations: list[Reservation], unreserved: list[Scope]) -> None:
        """Reserve the request's own limits alone (no attempt took them along),
        raising their refusal; `unreserved` is emptied once they are taken."""
        reservations += await self.limiter.acquire(unreserved)
        unreserved.clear()

    def started(self, candidate: Candidate) -> float:
        self.stats.started(candidate.deployment_id)
        OUTSTANDING.labels(candidate.deployment_id).inc()
        return self._clock()

    def finished(
        self,
        candidate: Candidate,
        started_at: float,
        first_byte_at: float | None,
        error: SwitchboardError | None,
    ) -> None:
        deployment = candidate.deployment_id
        now = self._clock()
        self.stats.finished(
            deployment,
            latency_s=now - started_at,
            ttft_s=None if first_byte_at is None else first_byte_at - started_at,
            ok=error is None,
        )
        OUTSTANDING.labels(deployment).dec()
        if error is None:
            self.breakers.record(deployment, True)
            outcome = "ok"
        elif error.reason in FAULTS:
            self.breakers.record(deployment, False)
            outcome = "fault"
        else:
            # Cancelled by the caller, or the caller's mistake: no verdict on the deployment.
            self.breakers.release(deployment)
            outcome = "other"
        ATTEMPTS.labels(deployment, outcome).inc()

    def health(self, catalog: Catalog) -> list[DeploymentHealth]:
        return [
            DeploymentHealth(
                candidate=c,
                state=self.breakers.state(c.deployment_id),
                outstanding=self.stats.outstanding(c.deployment_id),
                latency_s=self.stats.latency_s(c.deployment_id),
                ttft_s=self.stats.ttft_s(c.deployment_id),
            )
            for m in catalog.config.models
            for c in catalog.candidates(m)
        ]

    def forget(self, catalog: Catalog) -> None:
        """Drop state for deployments and models the registry no longer has."""
        ids = [c.deployment_id for m in catalog.config.models for c in catalog.candidates(m)]
        self.stats.forget(ids)
        self.breakers.forget(ids)
        self.balancer.forget(m.name for m in catalog.config.models)

    def _transition(self, deployment: str, old: State, new: State) -> None:
        BREAKER_STATE.labels(deployment).set(_STATE_VALUE[new])
        BREAKER_TRANSITIONS.labels(deployment, new.value).inc()
        log.warning(
            "deployment circuit breaker changed state",
            extra=log_fields(deployment=deployment, old=old.value, new=new.value),
        )
