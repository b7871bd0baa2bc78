"""Alert rules over model metrics (response_time, error_rate), evaluated by
the gpu service beside its GPU rules, in the same rule model, store and
notifications.

The figures are the usage ledger's (ClickHouse, through the usage service's
internal GpuHistoryService.QueryModelPerformance): every call through every
surface is counted there once, within about a second, so the window covers
live traffic on every router replica, not one process's view of it. While
enabled rules name a model metric, the last SWITCHBOARD_MODEL_ALERT_WINDOW of
traffic is read every SWITCHBOARD_MODEL_ALERT_INTERVAL_S; when the read fails
nothing is evaluated (no evidence either way), as for a GPU reading NVML did
not give."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from switchboard.gpu.v1 import gpu_pb2
from switchboard.usage.v1 import usage_pb2
from switchboard_common import env as values
from switchboard_common.env import SettingsError
from switchboard_common.errors import SwitchboardError
from switchboard_common.logs import log_fields
from switchboard_gpu.alerts import AlertEvaluator, enabled, is_model_rule

log = logging.getLogger(__name__)
_WINDOW = re.compile(r"^\d{1,4}[smhd]$")

Query = Callable[[str], Awaitable[usage_pb2.GetUsagePerformanceResponse]]
Record = Callable[[Sequence[gpu_pb2.GpuAlert]], Awaitable[None]]


@dataclass(frozen=True)
class ModelAlertSettings:
    interval_s: float = 15.0
    # A usage window (15m, 1h, 30s, ...): the traffic a rule is evaluated on.
    window: str = "5m"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ModelAlertSettings:
        interval = values.number(
            env, "SWITCHBOARD_MODEL_ALERT_INTERVAL_S", cls.interval_s, above=0, maximum=3600
        )
        window = values.text(env, "SWITCHBOARD_MODEL_ALERT_WINDOW", cls.window)
        if not _WINDOW.match(window):
            raise SettingsError(
                f"SWITCHBOARD_MODEL_ALERT_WINDOW must be a duration like 5m or 30s, got {window!r}"
            )
        return cls(interval_s=interval, window=window)


class ModelAlerts:
    """The loop: read the window's figures, evaluate, record and announce."""

    def __init__(
        self,
        evaluator: AlertEvaluator,
        query: Query,
        record: Record,
        settings: ModelAlertSettings,
        clock: Callable[[], float],
    ) -> None:
        self._evaluator = evaluator
        self._query = query
        self._record = record
        self._settings = settings
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="model-alerts")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _wanted(self) -> bool:
        return any(is_model_rule(r) and enabled(r) for r in self._evaluator.rules) or any(
            a.model for a in self._evaluator.active()
        )

    async def step(self) -> list[gpu_pb2.GpuAlert]:
        """One evaluation (when a rule or a firing alert needs one)."""
        if not self._wanted():
            return []
        try:
            figures = await self._query(self._settings.window)
        except SwitchboardError as err:
            if not self._failing:
                log.warning(
                    "model metrics unavailable; model alert rules wait",
                    extra=log_fields(error=err.message),
                )
            self._failing = True
            return []
        self._failing = False
        transitions = self._evaluator.evaluate_models(figures.by_model, self._clock())
        if transitions:
            await self._record(transitions)
        return transitions

    async def _run(self) -> None:
        while True:
            try:
                await self.step()
            except Exception:
                log.exception("model alert evaluation failed")
            await asyncio.sleep(self._settings.interval_s)
