"""Settling what admission reserved: in the background while serving, and at
shutdown nothing is left running against a limit store that is closing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import pytest

from switchboard_common.config import parse_config
from switchboard_router import accounting
from switchboard_router.accounting import Accounting
from switchboard_router.admission import Admission
from switchboard_router.budgets import Budgets
from switchboard_router.catalog import Catalog
from switchboard_router.limits import LocalLimiter, Reservation
from switchboard_router.usage_reporter import UsageReporter

pytestmark = pytest.mark.asyncio


class Store(LocalLimiter):
    """A limit store whose settlements finish only when told to."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.settled: list[tuple[str, int]] = []
        self.cancelled: list[str] = []

    async def settle(self, settled: Sequence[tuple[Reservation, int]]) -> None:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += [reservation.scope for reservation, _ in settled]
            raise
        self.settled += [(reservation.scope, actual) for reservation, actual in settled]


def _admission(*scopes: str) -> Admission:
    config = parse_config(
        {
            "providers": [{"name": "p", "kind": "mock"}],
            "models": [{"name": "m", "deployments": [{"provider": "p", "model": "x"}]}],
        }
    )
    admission = Admission(None, config.models[0], Catalog(config, created=0), estimate=50)
    admission.reservations = [Reservation(s, "entry", 50, 0) for s in scopes]
    admission.tokens = 12
    return admission


def _accounting(store: Store) -> Accounting:
    # Settling touches neither the usage stream nor the budgets' lookups.
    nothing = cast(Any, None)
    return Accounting(UsageReporter(nothing, max_pending=1), store, Budgets(nothing), "test")


async def test_token_reservations_settle_to_what_was_used() -> None:
    store = Store()
    books = _accounting(store)
    books.settle(_admission("rpm:key k", "tpm:key k", "tpm:model m"))
    store.release.set()
    await books.settled()
    # Request counts stand as reserved; token counts become the tokens used.
    assert sorted(store.settled) == [("tpm:key k", 12), ("tpm:model m", 12)]


async def test_shutdown_cancels_and_awaits_settlements_still_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(accounting, "SETTLE_GRACE_S", 0.05)
    store = Store()
    books = _accounting(store)
    books.settle(_admission("tpm:key k"))
    await books.settled()
    assert store.cancelled == ["tpm:key k"]
    assert store.settled == []
    # Nothing of the router's own is left running once settled() returns.
    assert asyncio.all_tasks() == {asyncio.current_task()}
