"""Accounting: every upstream attempt's usage record, attributed and handed to
the usage pipeline (one for each attempt, whatever happened to it), and the
settling of what admission reserved once the attempts are over."""

from __future__ import annotations

import asyncio
import itertools
import logging

from switchboard.usage.v1 import usage_pb2
from switchboard_common.ids import uuid7
from switchboard_common.logs import log_fields
from switchboard_router.admission import Admission
from switchboard_router.budgets import Budgets
from switchboard_router.catalog import Candidate
from switchboard_router.limits import Limiter
from switchboard_router.settings import DEFAULT_DURABLE_WAIT_S
from switchboard_router.surfaces import surface
from switchboard_router.usage_reporter import UsageReporter

usage_log = logging.getLogger("switchboard.usage")

# How long a shutdown lets settlements in flight finish before it cancels them.
SETTLE_GRACE_S = 2.0


class Accounting:
    def __init__(
        self,
        usage: UsageReporter,
        limiter: Limiter,
        budgets: Budgets,
        instance: str,
        durable_wait_s: float = DEFAULT_DURABLE_WAIT_S,
    ) -> None:
        # The longest a reply waits for its usage record to be durable while
        # the usage service is up (SWITCHBOARD_USAGE_DURABLE_WAIT_S).
        self.durable_wait_s = durable_wait_s
        self.usage = usage
        self.limiter = limiter
        self.budgets = budgets
        self.instance = instance
        self._sequence = itertools.count(1)
        self._background: set[asyncio.Task[None]] = set()

    def record(
        self,
        record: usage_pb2.UsageRecord,
        admission: Admission,
        requested: str,
        candidate: Candidate,
    ) -> None:
        """Attribute an attempt's usage record and hand it to the usage pipeline."""
        key = admission.key
        admission.tokens += record.total_tokens
        record.key_name = key.name if key else ""
        record.requested_model = requested
        record.model = candidate.model.name
        record.router_instance = self.instance
        record.sequence = next(self._sequence)
        record.config_version = admission.catalog.version
        record.surface = surface.current()
        surface.accounted(record)
        self.usage.submit(record)
        usage_log.debug(
            "usage",
            extra=log_fields(
                event_id=record.event_id,
                attempt=record.attempt,
                key=record.key_name,
                model=record.model,
                deployment=record.deployment_id,
                status=usage_pb2.UsageStatus.Name(record.status),
                prompt_tokens=record.prompt_tokens,
                completion_tokens=record.completion_tokens,
                estimated=record.estimated,
                latency_ms=round(record.latency_ms, 3),
                ttft_ms=round(record.ttft_ms, 3),
                sequence=record.sequence,
            ),
        )

    def record_lost(
        self,
        request_id: str,
        attempt: int,
        stream: bool,
        admission: Admission,
        requested: str,
        candidate: Candidate,
    ) -> None:
        """An attempt whose record never arrived (cancelled, or the provider
        died): account it here, so no attempt goes uncounted."""
        record = usage_pb2.UsageRecord(
            event_id=uuid7(),
            request_id=request_id,
            attempt=attempt,
            deployment_id=candidate.deployment_id,
            provider=candidate.provider.name,
            upstream_model=candidate.deployment.model,
            stream=stream,
            status=usage_pb2.USAGE_STATUS_CANCELLED,
            estimated=True,
        )
        self.record(record, admission, requested, candidate)

    async def durable(self, event_id: str) -> None:
        """The answer's end (unary reply, or the stream's [DONE]) waits for the
        usage service to hold the record durably."""
        await self.usage.durable(event_id, self.durable_wait_s)

    def settle(self, admission: Admission) -> None:
        """Replace token estimates with what the attempts used (in the background:
        the response must not wait on the limit store)."""
        self.budgets.release(admission.hold)
        settled = [
            (r, admission.tokens) for r in admission.reservations if r.scope.startswith("tpm:")
        ]
        if settled:
            task = asyncio.create_task(self.limiter.settle(settled))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def settled(self) -> None:
        """Before the limit store closes: let settlements in flight finish
        (briefly), then cancel and await the rest, so none is left holding a
        connection of a store that is closing."""
        if not self._background:
            return
        _, late = await asyncio.wait(set(self._background), timeout=SETTLE_GRACE_S)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
