"""Seed API 002's operational routes: model status, service health, usage and
performance statistics. Status comes from what the router knows live (each
deployment's circuit breaker, fed by traffic and by active probes, probes.py),
the last probe (when probes are on), and the usage ledger in ClickHouse
(latency and error rate over the last hour, across every replica);
statistics are the usage service's; config writes go to the registry, which
applies them live and logs them in its change log."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import grpc
from google.api import httpbody_pb2

from switchboard.router.v1 import multi_llm_pb2
from switchboard.usage.v1 import usage_pb2, usage_pb2_grpc
from switchboard_common.config import KeyConfig, ModelConfig
from switchboard_common.errors import R, SwitchboardError, from_rpc_error
from switchboard_common.policy import current_caller
from switchboard_router.breaker import State
from switchboard_router.probes import Prober
from switchboard_router.surfaces import surface
from switchboard_router.surfaces.multi_llm_shapes import answer, error

if TYPE_CHECKING:
    from switchboard_router.service import RouterServicer

Context = grpc.aio.ServicerContext[Any, Any]
NAME = "multi_llm"
CALL_TIMEOUT_S = 10.0

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
AVAILABLE, UNAVAILABLE = "available", "unavailable"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def model_health(router: RouterServicer) -> dict[str, str]:
    """Per model: healthy (every deployment's breaker closed), degraded (some
    open or probing), unhealthy (all open, or no deployment)."""
    states: dict[str, list[State]] = defaultdict(list)
    for health in router.routing.health(router.catalog):
        states[health.candidate.model.name].append(health.state)
    out = {}
    for model in router.catalog.config.models:
        seen = states.get(model.name, [])
        if not seen or all(s is State.OPEN for s in seen):
            out[model.name] = UNHEALTHY
        elif any(s is not State.CLOSED for s in seen):
            out[model.name] = DEGRADED
        else:
            out[model.name] = HEALTHY
    return out


def model_status(model: ModelConfig, health: str) -> str:
    return AVAILABLE if model.online and health != UNHEALTHY else UNAVAILABLE


class Operations:
    """MultiLlmService's operational RPCs (mixed into MultiLlmServicer)."""

    router: RouterServicer
    prober: Prober
    # The usage service's public queries (summary, performance).
    usage: usage_pb2_grpc.UsageServiceAsyncStub

    def _key(self, context: Context) -> KeyConfig | None:
        return current_caller().key

    async def _usage(self, call: Any, request: Any, context: Context) -> Any:
        """A usage query on the caller's behalf: its key goes along, so the usage
        service's access policy shows a client key its own traffic only."""
        metadata = tuple(
            (name, value)
            for name, value in context.invocation_metadata() or ()
            if name in ("authorization", "x-api-key")
        )
        try:
            return await call(request, timeout=CALL_TIMEOUT_S, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, "usage") from None

    async def GetModelStatus(
        self, request: multi_llm_pb2.GetModelStatusRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(lambda err: error(err, model=request.model_id)):
            key = self._key(context)
            model = self.router.catalog.find(request.model_id)
            allowed = key is None or key.models is None or (model and model.name in key.models)
            if model is None or not allowed:
                raise SwitchboardError(
                    R.ERROR_REASON_MODEL_NOT_FOUND,
                    f"The model '{request.model_id[:64]}' does not exist "
                    "or you do not have access to it.",
                )
            health = model_health(self.router)[model.name]
            perf = await self._usage(
                self.usage.GetUsagePerformance,
                usage_pb2.GetUsagePerformanceRequest(window="1h", model=model.name),
                context,
            )
            measured = perf.by_model.get(model.name)
            probe = self.prober.last(model.name)
            if probe is not None:
                response_time = round(probe.latency_ms)
                checked = probe.at.strftime("%Y-%m-%dT%H:%M:%SZ")
            else:
                response_time = round(measured.latency_ms.average) if measured else 0
                checked = _now()
            return answer(
                {
                    "model_id": model.name,
                    "status": model_status(model, health),
                    "health": health,
                    "response_time_ms": response_time,
                    "last_check": checked,
                    "error_rate": round(measured.error_rate, 4) if measured else 0.0,
                }
            )

    async def GetLlmHealth(
        self, request: multi_llm_pb2.GetLlmHealthRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(error):
            services = {
                "llm_service": HEALTHY,
                # The registry's snapshot: without one, no model is known.
                "model_manager": HEALTHY if self.router.catalog.version > 0 else UNHEALTHY,
                # The usage service acking records (what cost tracking rests on).
                "cost_tracker": HEALTHY if self.router.usage.connected else UNHEALTHY,
            }
            healths = model_health(self.router)
            counts = {AVAILABLE: 0, HEALTHY: 0, DEGRADED: 0, UNAVAILABLE: 0}
            for model in self.router.catalog.config.models:
                health = healths[model.name] if model.online else UNHEALTHY
                counts[UNAVAILABLE if health == UNHEALTHY else health] += 1
                if model_status(model, health) == AVAILABLE:
                    counts[AVAILABLE] += 1
            if services["model_manager"] != HEALTHY:
                status = UNHEALTHY
            elif UNHEALTHY in services.values() or counts[DEGRADED] or counts[UNAVAILABLE]:
                status = DEGRADED
            else:
                status = HEALTHY
            return answer(
                {"status": status, "timestamp": _now(), "services": services, "models": counts}
            )

    async def GetUsageStats(
        self, request: multi_llm_pb2.GetUsageStatsRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(error):
            self._key(context)
            start = request.start_date or dt.datetime.now(dt.UTC).date().isoformat()
            summary = await self._usage(
                self.usage.GetUsageSummary,
                usage_pb2.GetUsageSummaryRequest(
                    start=start, end=request.end_date or start, model=request.model
                ),
                context,
            )
            return answer(
                {
                    "period": {"start": summary.period.start, "end": summary.period.end},
                    "total_requests": int(summary.total_requests),
                    "total_tokens": int(summary.total_tokens),
                    "total_cost": round(summary.total_cost, 9),
                    "by_model": {
                        name: {
                            "requests": int(usage.requests),
                            "tokens": int(usage.tokens),
                            "cost": round(usage.cost, 9),
                        }
                        for name, usage in sorted(summary.by_model.items())
                    },
                }
            )

    async def GetPerformanceStats(
        self, request: multi_llm_pb2.GetPerformanceStatsRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(error):
            self._key(context)
            perf = await self._usage(
                self.usage.GetUsagePerformance,
                usage_pb2.GetUsagePerformanceRequest(
                    window=request.window or "1h", model=request.model
                ),
                context,
            )
            latency = perf.latency_ms
            return answer(
                {
                    "response_times": {
                        "average_ms": round(latency.average),
                        "p50_ms": round(latency.p50),
                        "p95_ms": round(latency.p95),
                        "p99_ms": round(latency.p99),
                    },
                    "success_rate": round(perf.success_rate, 4),
                    "error_rate": round(perf.error_rate, 4),
                    "throughput": {
                        "requests_per_minute": round(perf.requests_per_second * 60, 2),
                        "tokens_per_minute": round(perf.output_tokens_per_second * 60, 2),
                    },
                }
            )
