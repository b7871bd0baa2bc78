"""Spend budgets for keys and models: refuse once the budget is spent.

Spend comes from usage accounting (UsageLedgerService.GetSpend: what ClickHouse has
plus what is still in the usage outbox), cached briefly per scope so a busy key
costs one lookup a second, not one per request. What this router has admitted
but usage cannot see yet is held here at its worst-case cost (the estimated
prompt plus max_tokens at the model's prices) until well after the call ended,
so the check errs on the side of refusing. Budgets count all time.

When spend cannot be read and nothing is cached, a budgeted call is refused
(503): a budget that cannot be checked is not a budget."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from switchboard.usage.v1 import usage_pb2, usage_pb2_grpc
from switchboard_common.config import KeyConfig, ModelConfig
from switchboard_common.errors import R, SwitchboardError

# How long a looked-up spend is reused.
SPEND_TTL_S = 1.0
# How long a finished call's worst-case cost stays held: long enough for its usage
# record to reach the usage service's outbox, which GetSpend counts.
HOLD_AFTER_S = 3.0
LOOKUP_TIMEOUT_S = 0.5


@dataclass
class Hold:
    """Worst-case cost held against each budgeted scope for one call."""

    scopes: list[str]
    cost: float
    released_at: float | None = None


@dataclass
class _Spend:
    value: float
    fetched_at: float


@dataclass
class Budgets:
    usage: usage_pb2_grpc.UsageLedgerServiceAsyncStub
    clock: Callable[[], float] = time.monotonic
    _spend: dict[str, _Spend] = field(default_factory=dict)
    _holds: dict[str, list[Hold]] = field(default_factory=dict)
    _fetching: dict[str, asyncio.Task[float]] = field(default_factory=dict)

    async def admit(self, key: KeyConfig | None, model: ModelConfig, tokens: int) -> Hold | None:
        scopes: list[tuple[str, float, str, str]] = []
        if key is not None and key.budget:
            scopes.append((f"key {key.name}", key.budget, "API key", key.name))
        if model.budget:
            scopes.append((f"model {model.name}", model.budget, "model", model.name))
        if not scopes:
            return None
        currency = model.pricing.currency
        for scope, budget, label, name in scopes:
            spent = await self._spent(scope)
            held = self._held(scope)
            if spent + held >= budget:
                raise SwitchboardError(
                    R.ERROR_REASON_BUDGET_EXCEEDED,
                    f"The {label} '{name}' has used its budget of {budget:g} {currency} "
                    f"(spent {spent:.6g}, {held:.6g} more in flight).",
                )
        price = model.pricing.input_per_1k + model.pricing.output_per_1k
        hold = Hold([s for s, *_ in scopes], cost=tokens * price / 1000)
        for scope in hold.scopes:
            self._holds.setdefault(scope, []).append(hold)
        return hold

    def release(self, hold: Hold | None) -> None:
        if hold is not None:
            hold.released_at = self.clock()

    def _held(self, scope: str) -> float:
        now = self.clock()
        holds = [
            h
            for h in self._holds.get(scope, [])
            if h.released_at is None or now - h.released_at < HOLD_AFTER_S
        ]
        self._holds[scope] = holds
        return sum(h.cost for h in holds)

    async def _spent(self, scope: str) -> float:
        cached = self._spend.get(scope)
        if cached is not None and self.clock() - cached.fetched_at < SPEND_TTL_S:
            return cached.value
        # One lookup per scope at a time; concurrent callers share it.
        task = self._fetching.get(scope)
        if task is None:
            task = self._fetching[scope] = asyncio.create_task(self._fetch(scope))
            task.add_done_callback(lambda _t: self._fetching.pop(scope, None))
        try:
            return await asyncio.shield(task)
        except (grpc.aio.AioRpcError, TimeoutError):
            if cached is not None:
                return cached.value
            raise SwitchboardError(
                R.ERROR_REASON_SERVICE_UNAVAILABLE,
                "spend cannot be checked right now (usage accounting is unreachable); "
                "budgeted calls are refused until it is back",
            ) from None

    async def _fetch(self, scope: str) -> float:
        kind, _, name = scope.partition(" ")
        request = (
            usage_pb2.GetSpendRequest(key_name=name)
            if kind == "key"
            else usage_pb2.GetSpendRequest(model=name)
        )
        response = await self.usage.GetSpend(request, timeout=LOOKUP_TIMEOUT_S)
        self._spend[scope] = _Spend(response.cost, self.clock())
        return float(response.cost)

    async def close(self) -> None:
        for task in list(self._fetching.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
