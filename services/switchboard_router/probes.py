"""Active health checks: every `health_check_interval` seconds (the registry's
load-balancing setting; 0, the default, turns them off), one cheap call to each
deployment of each online chat model: "ping", at most one output token.

A probe is an ordinary upstream attempt, made by RouterService's own attempt
code: the deployment's breaker admits it (an open breaker is not probed until
its cooldown ends; a half-open one takes the probe as its trial), its outcome
feeds the breaker and the latency figures like live traffic, and its usage is
recorded in the ledger once, with surface "probe". Seed API 002's model status
reports the last probe of each model."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from switchboard.common.v1 import openai_pb2
from switchboard_common.deadlines import Deadline
from switchboard_common.errors import SwitchboardError
from switchboard_common.ids import uuid7
from switchboard_common.logs import log_fields, request_id_var
from switchboard_router.admission import Admission
from switchboard_router.attempts import Generation
from switchboard_router.catalog import Candidate
from switchboard_router.surfaces import surface

if TYPE_CHECKING:
    from switchboard_router.service import RouterServicer

log = logging.getLogger(__name__)
NAME = "probe"
PROBE_TIMEOUT_S = 30.0
# How often a prober with probes off looks again at the setting.
IDLE_S = 5.0


@dataclass(frozen=True)
class ProbeResult:
    at: dt.datetime
    ok: bool
    latency_ms: float


class Prober:
    def __init__(self, router: RouterServicer) -> None:
        self.router = router
        # The last probe of each deployment, by deployment id.
        self.results: dict[str, ProbeResult] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def interval(self) -> float:
        """The load-balancing setting's interval, else the service settings'
        (seed 004's health_check_interval); 0: no probes."""
        balancing = self.router.catalog.config.load_balancing
        if balancing is not None and balancing.health_check_interval_s:
            return float(balancing.health_check_interval_s)
        return float(self.router.service_settings.health_check_interval_s)

    def last(self, model: str) -> ProbeResult | None:
        """The latest probe of any deployment of the model."""
        found = [r for d, r in self.results.items() if d.startswith(f"{model}.")]
        return max(found, key=lambda r: r.at, default=None)

    async def _run(self) -> None:
        while True:
            interval = self.interval()
            if interval <= 0:
                await asyncio.sleep(IDLE_S)
                continue
            await self.probe_all()
            await asyncio.sleep(interval)

    async def probe_all(self) -> None:
        catalog = self.router.catalog
        candidates = [
            c
            for m in catalog.config.models
            if m.online and m.kind == "chat"
            for c in catalog.candidates(m)
        ]
        await asyncio.gather(*(self._probe(c) for c in candidates))

    async def _probe(self, candidate: Candidate) -> None:
        # Each probe runs in its own task (gather): the surface and request id stay its own.
        surface.enter(NAME)
        request_id_var.set(uuid7())
        router = self.router
        admission = Admission(key=None, model=candidate.model, catalog=router.catalog)
        if await router.routing.acquire(candidate, 1, admission.reservations) is not None:
            return  # cooling down (or at its rate limit): nothing to learn now
        params = openai_pb2.ChatCompletionParams(model=candidate.model.name, max_tokens=1)
        params.messages.add(role="user").content.string_value = "ping"
        exchange = Generation(router.provider, "chat", params, stream=False)
        started = asyncio.get_running_loop().time()
        ok = False
        try:
            attempt = router.attempts.attempt(
                Deadline(PROBE_TIMEOUT_S),  # type: ignore[arg-type]
                admission,
                candidate.model.name,
                exchange,
                candidate,
                0,
            )
            async with contextlib.aclosing(attempt) as events:
                async for _ in events:
                    pass
            ok = True
        except SwitchboardError as err:
            log.info(
                "probe failed",
                extra=log_fields(deployment=candidate.deployment_id, reason=err.reason_name),
            )
        finally:
            router.accounting.settle(admission)
            self.results[candidate.deployment_id] = ProbeResult(
                at=dt.datetime.now(dt.UTC),
                ok=ok,
                latency_ms=(asyncio.get_running_loop().time() - started) * 1000,
            )
