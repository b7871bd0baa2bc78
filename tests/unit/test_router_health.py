"""The router's health report: what makes the suite unable to serve (503 at the
edge) and what only degrades it (switchboard_router/health.py)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from switchboard.usage.v1 import usage_pb2
from switchboard_common.errors import HTTP_STATUS_HEADER
from switchboard_router.health import (
    OK,
    Component,
    HealthMonitor,
    Probe,
    Report,
    probe_service,
    probe_usage,
)
from switchboard_router.usage_reporter import UsageReporter
from switchboard_stack.harness import free_port


def _fixed(component: Component) -> Probe:
    async def probe() -> Component:
        return component

    return probe


class _Context:
    """What GetHealth uses of a grpc.aio context: its initial metadata."""

    def __init__(self) -> None:
        self.sent: list[tuple[tuple[str, str], ...]] = []

    async def send_initial_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.sent.append(metadata)


def test_report_states() -> None:
    ok = Report({"router": Component(OK), "provider": Component(OK)})
    assert (ok.status, ok.can_serve) == ("ok", True)
    gpu_down = Report({"provider": Component(OK), "gpu": Component("down", "unreachable")})
    assert (gpu_down.status, gpu_down.can_serve) == ("degraded", True)
    provider_down = Report({"provider": Component("down", "unreachable", blocking=True)})
    assert (provider_down.status, provider_down.can_serve) == ("unavailable", False)


@pytest.mark.asyncio
async def test_get_health_answers_503_at_the_edge_when_the_suite_cannot_serve() -> None:
    monitor = HealthMonitor(
        {
            "provider": _fixed(Component("down", "unreachable (UNAVAILABLE)", blocking=True)),
            "gpu": _fixed(Component(OK)),
        }
    )
    context = _Context()
    answer = await monitor.answer(context)  # type: ignore[arg-type]
    assert answer.status == "unavailable"
    assert dict(answer.components) == {
        "router": "ok",
        "provider": "down: unreachable (UNAVAILABLE)",
        "gpu": "ok",
    }
    assert context.sent == [((HTTP_STATUS_HEADER, "503"),)]
    assert not monitor.ready()


@pytest.mark.asyncio
async def test_a_degraded_suite_still_answers_200() -> None:
    monitor = HealthMonitor({"gpu": _fixed(Component("down", "unreachable"))})
    await monitor.refresh()
    context = _Context()
    answer = await monitor.answer(context)  # type: ignore[arg-type]
    assert answer.status == "degraded"
    assert context.sent == []
    assert monitor.ready()


@pytest.mark.asyncio
async def test_usage_down_degrades_until_its_buffer_is_full() -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as nowhere:
        stub: Any = None  # never called: the reporter is not started
        reporter = UsageReporter(stub, max_pending=1)
        down = await probe_usage(nowhere, reporter)()
        assert (down.state, down.blocking) == ("down", False)
        reporter.submit(usage_pb2.UsageRecord(event_id="e1"))
        full = await probe_usage(nowhere, reporter)()
        assert (full.state, full.blocking) == ("down", True)
        assert "refuses calls" in full.detail
        provider = await probe_service(nowhere, essential=True)()
        assert provider.blocking
        assert provider.detail.startswith("unreachable")
