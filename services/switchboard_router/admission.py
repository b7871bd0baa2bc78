"""Admission: whether a request may be served at all, decided before any
upstream is asked. Auth first (401 before 400), then the body, then the model
(404/403), then the budgets and the rate limits (429). What it reserves is
settled by accounting once the attempts are over.

The key's and model's rate limits are not reserved here but by the first
attempt, together with its deployment's, in one round trip to the limit store
(`Routing.acquire`; before, a request took two). A request that reaches no
attempt reserves them alone (`Routing.reserve`) before it fails, so that a 429
still comes before a 503, as does a cache hit before it is served."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from switchboard_common import tracing
from switchboard_common.config import KeyConfig, ModelConfig
from switchboard_common.errors import R, SwitchboardError
from switchboard_router.budgets import Budgets, Hold
from switchboard_router.catalog import Catalog
from switchboard_router.defaults import apply_defaults
from switchboard_router.limits import Reservation, Scope, estimate_tokens
from switchboard_router.usage_reporter import UsageReporter

Metadata = Iterable[tuple[str, str | bytes]]


@dataclass
class Admission:
    """A request let in: who, which model, what it reserved against the limits,
    and the tokens its upstream attempts used (to settle those reservations)."""

    key: KeyConfig | None
    model: ModelConfig
    # The catalog it was admitted under; usage records carry its registry version.
    catalog: Catalog
    # Tokens reserved against TPM limits: the estimated prompt plus max_tokens.
    estimate: int = 0
    reservations: list[Reservation] = field(default_factory=list)
    # The key's and model's limits, not reserved yet (see the module's docstring).
    unreserved: list[Scope] = field(default_factory=list)
    tokens: int = 0
    # Worst-case cost held against the key's and model's budgets.
    hold: Hold | None = None


class Gate:
    """Lets requests in against one router's budgets and usage stream."""

    def __init__(self, usage: UsageReporter, budgets: Budgets) -> None:
        self.usage = usage
        self.budgets = budgets

    async def admit(
        self,
        catalog: Catalog,
        key: KeyConfig | None,
        params: Any,
        validate: Callable[[Any], None],
        kind: str,
    ) -> Admission:
        """The access policy authenticated the caller (401 before 400); then the
        body, then the model (404/403), then budgets (429); rate limits are
        the first attempt's to reserve."""
        attributes = {
            tracing.OPERATION: tracing.operation(kind),
            tracing.REQUEST_MODEL: params.model,
        }
        with tracing.span("router.admission", attributes):
            return await self._admit(catalog, key, params, validate, kind)

    async def _admit(
        self,
        catalog: Catalog,
        key: KeyConfig | None,
        params: Any,
        validate: Callable[[Any], None],
        kind: str,
    ) -> Admission:
        if self.usage.full:
            raise SwitchboardError(
                R.ERROR_REASON_SERVICE_UNAVAILABLE,
                "usage accounting is unavailable; refusing requests that could not be counted",
            )
        validate(params)
        model = catalog.resolve(params.model, key, kind)
        # A model's default parameters fill what the call left out, on every surface.
        apply_defaults(model, params)
        estimate = estimate_tokens(params)
        admission = Admission(
            key, model, catalog, estimate, unreserved=_scopes(key, model, estimate)
        )
        admission.hold = await self.budgets.admit(key, model, estimate)
        return admission


def _scopes(key: KeyConfig | None, model: ModelConfig, tokens: int) -> list[Scope]:
    """The key's limits, then the model's: a refusal names the first one reached."""
    scopes: list[tuple[str, int | None, int]] = [
        (f"rpm:model {model.name}", model.rpm, 1),
        (f"tpm:model {model.name}", model.tpm, tokens),
    ]
    if key is not None:
        scopes[:0] = [
            (f"rpm:key {key.name}", key.rpm, 1),
            (f"tpm:key {key.name}", key.tpm, tokens),
        ]
    return [Scope(name, limit, cost) for name, limit, cost in scopes if limit]
