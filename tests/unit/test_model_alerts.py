"""Alert rules over model metrics (response_time, error_rate): evaluated per
model on a window of traffic, in the same rule model as GPU rules; and the
loop that reads the window from the usage ledger."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from switchboard.gpu.v1 import gpu_pb2
from switchboard.usage.v1 import usage_pb2
from switchboard_common.errors import R, SwitchboardError
from switchboard_gpu.model_alerts import ModelAlerts, ModelAlertSettings
from tests.unit.test_gpu_alerts import FIRING, LT, RESOLVED, T0, evaluator, gpu, rule, sample


def perf(average_ms: float, requests: float = 10, errors: float = 0) -> usage_pb2.ModelPerformance:
    return usage_pb2.ModelPerformance(
        total_requests=requests,
        success_rate=(requests - errors) / requests,
        error_rate=errors / requests,
        latency_ms=usage_pb2.LatencyPercentiles(average=average_ms),
    )


def test_a_slow_model_fires_after_its_duration_and_resolves() -> None:
    e = evaluator(rule("slow", "response_time", threshold=2.0, duration_s=10))
    assert e.evaluate_models({"m": perf(2500)}, T0) == []  # pending
    assert e.evaluate_models({"m": perf(2500), "quick": perf(100)}, T0 + 5) == []
    [fired] = e.evaluate_models({"m": perf(2600)}, T0 + 10)
    assert fired.state == FIRING
    assert (fired.model, fired.gpu_uuid, fired.metric) == ("m", "", "response_time")
    assert fired.value == pytest.approx(2.6)
    assert fired.message == "response_time 2.6 > 2 on model m for 10s"
    assert e.active() == [fired]
    assert e.evaluate_models({"m": perf(2600)}, T0 + 11) == []  # fires once
    [resolved] = e.evaluate_models({"m": perf(900)}, T0 + 12)
    assert (resolved.state, resolved.alert_id) == (RESOLVED, fired.alert_id)
    assert e.active() == []


def test_error_rate_per_model_and_no_traffic_resolves() -> None:
    e = evaluator(rule("errors", "error_rate", threshold=0.05, duration_s=0))
    [fired] = e.evaluate_models({"a": perf(10, errors=2), "b": perf(10)}, T0)
    assert fired.model == "a"
    assert fired.value == pytest.approx(0.2)
    # Nothing left in the window: its condition no longer holds.
    [resolved] = e.evaluate_models({}, T0 + 1)
    assert resolved.state == RESOLVED
    assert resolved.message == "resolved: no traffic in the window"


def test_no_successful_request_is_no_response_time_reading() -> None:
    e = evaluator(rule("slow", "response_time", comparator=LT, threshold=1.0, duration_s=0))
    # Every request failed: there is no latency to compare, so nothing fires.
    assert e.evaluate_models({"m": perf(0, requests=3, errors=3)}, T0) == []


def test_gpu_and_model_rules_keep_to_their_own_readings() -> None:
    e = evaluator(
        rule("slow", "response_time", threshold=1.0, duration_s=0),
        rule("hot", "temperature_c", threshold=80, duration_s=0),
    )
    [model_alert] = e.evaluate_models({"m": perf(5000)}, T0)
    # A GPU sample neither warns about the model rule nor drops its alert.
    [gpu_alert] = e.evaluate(sample(T0 + 1, gpu(temperature_c=90)))
    assert gpu_alert.gpu_uuid == "GPU-a"
    assert not gpu_alert.model
    assert e.evaluate(sample(T0 + 2)) == []
    assert {a.alert_id for a in e.active()} == {model_alert.alert_id, gpu_alert.alert_id}
    # And the model pass leaves GPU alerts alone.
    [resolved] = e.evaluate_models({}, T0 + 3)
    assert resolved.alert_id == model_alert.alert_id
    assert [a.alert_id for a in e.active()] == [gpu_alert.alert_id]


def test_a_model_alert_adopted_after_a_restart_resolves_under_its_id() -> None:
    e = evaluator(rule("slow", "response_time", threshold=1.0, duration_s=0))
    [fired] = e.evaluate_models({"m": perf(5000)}, T0)
    again = evaluator(rule("slow", "response_time", threshold=1.0, duration_s=0))
    again.adopt([fired])
    assert again.evaluate_models({"m": perf(5000)}, T0 + 1) == []  # not twice
    [resolved] = again.evaluate_models({"m": perf(10)}, T0 + 2)
    assert resolved.alert_id == fired.alert_id


@pytest.mark.asyncio
async def test_the_loop_reads_the_window_only_while_a_rule_needs_it() -> None:
    e = evaluator(rule("hot", "temperature_c"))
    windows: list[str] = []
    recorded: list[gpu_pb2.GpuAlert] = []
    figures = usage_pb2.GetUsagePerformanceResponse()
    figures.by_model["m"].CopyFrom(perf(3000))

    async def query(window: str) -> usage_pb2.GetUsagePerformanceResponse:
        windows.append(window)
        return figures

    async def record(alerts: Sequence[gpu_pb2.GpuAlert]) -> None:
        recorded.extend(alerts)

    loop = ModelAlerts(e, query, record, ModelAlertSettings(window="1m"), lambda: T0)
    assert await loop.step() == []
    assert windows == []
    e.set_rules([rule("slow", "response_time", threshold=1.0, duration_s=0)], 2, T0)
    [fired] = await loop.step()
    assert windows == ["1m"]
    assert recorded == [fired]

    async def down(window: str) -> usage_pb2.GetUsagePerformanceResponse:
        raise SwitchboardError(R.ERROR_REASON_SERVICE_UNAVAILABLE, "usage is down")

    # The ledger unreachable: no evidence, the alert stays firing.
    loop = ModelAlerts(e, down, record, ModelAlertSettings(), lambda: T0 + 5)
    assert await loop.step() == []
    assert e.active() == [fired]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SWITCHBOARD_MODEL_ALERT_INTERVAL_S": "0"}, "INTERVAL_S"),
        ({"SWITCHBOARD_MODEL_ALERT_WINDOW": "5 minutes"}, "WINDOW"),
    ],
)
def test_settings_are_checked(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelAlertSettings.from_env(env)
    assert ModelAlertSettings.from_env({}) == ModelAlertSettings(interval_s=15.0, window="5m")
