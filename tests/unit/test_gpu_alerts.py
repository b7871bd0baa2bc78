"""Alert rules evaluated on scripted samples: an alert fires only once its
condition held for the whole duration (in sample time), resolves on the first
sample where it no longer holds, and missing readings, rule changes and
restarts are handled as documented in switchboard_gpu.alerts."""

from __future__ import annotations

import itertools

import pytest
from google.protobuf import duration_pb2

from switchboard.gpu.v1 import gpu_pb2
from switchboard.registry.v1 import registry_pb2
from switchboard_gpu.alerts import METRICS, AlertEvaluator, to_timestamp

GT = registry_pb2.COMPARATOR_GREATER_THAN
LT = registry_pb2.COMPARATOR_LESS_THAN
FIRING = gpu_pb2.ALERT_STATE_FIRING
RESOLVED = gpu_pb2.ALERT_STATE_RESOLVED
T0 = 1_735_689_600.0


def rule(
    name: str = "hot",
    metric: str = "temperature_c",
    comparator: registry_pb2.Comparator.ValueType = GT,
    threshold: float = 80.0,
    duration_s: float = 60.0,
    severity: registry_pb2.Severity.ValueType = registry_pb2.SEVERITY_WARNING,
    enabled: bool | None = None,
) -> registry_pb2.AlertRule:
    r = registry_pb2.AlertRule(
        name=name,
        metric=metric,
        comparator=comparator,
        threshold=threshold,
        duration=duration_pb2.Duration(seconds=int(duration_s), nanos=int(duration_s % 1 * 1e9)),
        severity=severity,
    )
    if enabled is not None:
        r.enabled = enabled
    return r


def sample(at: float, *devices: gpu_pb2.GpuDevice, available: bool = True) -> gpu_pb2.NodeStatus:
    status = gpu_pb2.NodeStatus(
        hostname="node-1",
        nvml_state=gpu_pb2.NVML_STATE_AVAILABLE if available else gpu_pb2.NVML_STATE_UNAVAILABLE,
        devices=devices if available else (),
    )
    status.sample_time.CopyFrom(to_timestamp(at))
    return status


def gpu(uuid: str = "GPU-a", index: int = 0, **readings: float) -> gpu_pb2.GpuDevice:
    return gpu_pb2.GpuDevice(uuid=uuid, index=index, **readings)  # type: ignore[arg-type]


def evaluator(*rules: registry_pb2.AlertRule) -> AlertEvaluator:
    ids = (f"alert-{i}" for i in itertools.count(1))
    e = AlertEvaluator("node-1", new_id=lambda: next(ids))
    assert e.set_rules(rules, version=1, now=T0) == []
    return e


def at_s(ts: gpu_pb2.GpuAlert) -> float:
    return ts.time.ToNanoseconds() / 1e9


def test_fires_only_after_the_condition_held_for_its_duration() -> None:
    e = evaluator(rule(duration_s=60))

    assert e.evaluate(sample(T0, gpu(temperature_c=81))) == []
    assert e.evaluate(sample(T0 + 30, gpu(temperature_c=95))) == []
    assert e.evaluate(sample(T0 + 59.999, gpu(temperature_c=81))) == []
    (fired,) = e.evaluate(sample(T0 + 60, gpu(temperature_c=82)))

    assert fired.state == FIRING
    assert fired.alert_id == "alert-1"
    assert (fired.hostname, fired.gpu_uuid, fired.gpu_index) == ("node-1", "GPU-a", 0)
    assert (fired.value, fired.threshold) == (82.0, 80.0)
    assert at_s(fired) == T0 + 60
    assert fired.start_time == fired.time
    assert fired.message == "temperature_c 82 > 80 for 60s"
    assert e.active() == [fired]
    # Still holding: no second event.
    assert e.evaluate(sample(T0 + 61, gpu(temperature_c=90))) == []


def test_a_dip_restarts_the_duration() -> None:
    e = evaluator(rule(duration_s=60))

    e.evaluate(sample(T0, gpu(temperature_c=85)))
    # Equal to the threshold is not "greater than".
    assert e.evaluate(sample(T0 + 50, gpu(temperature_c=80))) == []
    assert e.evaluate(sample(T0 + 60, gpu(temperature_c=85))) == []
    assert e.evaluate(sample(T0 + 119, gpu(temperature_c=85))) == []
    (fired,) = e.evaluate(sample(T0 + 120, gpu(temperature_c=85)))
    assert at_s(fired) == T0 + 120


def test_resolves_on_the_first_sample_that_no_longer_holds() -> None:
    e = evaluator(rule(duration_s=0))
    (fired,) = e.evaluate(sample(T0, gpu(temperature_c=90)))

    (resolved,) = e.evaluate(sample(T0 + 5, gpu(temperature_c=79.5)))

    assert resolved.alert_id == fired.alert_id
    assert resolved.state == RESOLVED
    assert resolved.value == 79.5
    assert at_s(resolved) == T0 + 5
    assert resolved.start_time == fired.start_time
    assert resolved.message == "resolved: temperature_c 79.5 no longer > 80"
    assert e.active() == []
    # Firing again is a new alert.
    (again,) = e.evaluate(sample(T0 + 6, gpu(temperature_c=90)))
    assert again.alert_id == "alert-2"


def test_less_than_and_derived_metrics() -> None:
    e = evaluator(
        rule("idle", "utilization_gpu_percent", LT, 5, 0),
        rule("full", "memory_used_percent", GT, 90, 0, registry_pb2.SEVERITY_CRITICAL),
    )

    events = e.evaluate(
        sample(T0, gpu(utilization_gpu_percent=1, memory_used_mib=950, memory_total_mib=1000))
    )

    assert [(a.rule_name, a.value) for a in events] == [("idle", 1.0), ("full", 95.0)]
    assert events[1].severity == registry_pb2.SEVERITY_CRITICAL
    assert events[0].message == "utilization_gpu_percent 1 < 5 for 0s"


def test_each_gpu_is_its_own_alert() -> None:
    e = evaluator(rule(duration_s=10))

    e.evaluate(sample(T0, gpu("GPU-a", 0, temperature_c=90), gpu("GPU-b", 1, temperature_c=50)))
    e.evaluate(sample(T0 + 5, gpu("GPU-a", 0, temperature_c=90), gpu("GPU-b", 1, temperature_c=90)))
    (a,) = e.evaluate(
        sample(T0 + 10, gpu("GPU-a", 0, temperature_c=90), gpu("GPU-b", 1, temperature_c=90))
    )
    (b,) = e.evaluate(
        sample(T0 + 15, gpu("GPU-a", 0, temperature_c=90), gpu("GPU-b", 1, temperature_c=90))
    )

    assert (a.gpu_uuid, b.gpu_uuid) == ("GPU-a", "GPU-b")
    assert a.alert_id != b.alert_id


def test_a_missing_reading_proves_nothing() -> None:
    e = evaluator(rule("hot", duration_s=10), rule("hot-now", duration_s=0))
    (firing,) = e.evaluate(sample(T0, gpu(temperature_c=90)))
    assert firing.rule_name == "hot-now"

    # Reading absent, GPU gone, NVML down: the firing alert stays firing, and
    # the pending one must start over.
    assert e.evaluate(sample(T0 + 5, gpu())) == []
    assert e.evaluate(sample(T0 + 6)) == []
    assert e.evaluate(sample(T0 + 7, available=False)) == []
    assert [a.rule_name for a in e.active()] == ["hot-now"]
    assert e.evaluate(sample(T0 + 11, gpu(temperature_c=90))) == []  # pending anew from here
    (late,) = e.evaluate(sample(T0 + 21, gpu(temperature_c=90)))
    assert late.rule_name == "hot"


def test_removed_disabled_and_changed_rules_resolve_their_alerts() -> None:
    e = evaluator(rule("a", duration_s=0), rule("b", duration_s=0), rule("c", duration_s=0))
    fired = {a.rule_name: a for a in e.evaluate(sample(T0, gpu(temperature_c=90)))}
    assert set(fired) == {"a", "b", "c"}

    resolved = e.set_rules(
        [
            rule("b", duration_s=0, enabled=False),
            rule("c", duration_s=0, severity=registry_pb2.SEVERITY_CRITICAL),
        ],
        version=2,
        now=T0 + 3,
    )

    assert [(a.rule_name, a.state, a.message) for a in resolved] == [
        ("a", RESOLVED, "resolved: rule removed"),
        ("b", RESOLVED, "resolved: rule removed"),
        ("c", RESOLVED, "resolved: rule changed"),
    ]
    assert all(at_s(a) == T0 + 3 for a in resolved)
    assert [a.alert_id for a in resolved] == [fired[n].alert_id for n in "abc"]
    assert e.registry_version == 2
    assert [r.name for r in e.rules] == ["c"]
    # The changed rule starts over and fires as a new alert.
    (new,) = e.evaluate(sample(T0 + 4, gpu(temperature_c=90)))
    assert (new.rule_name, new.severity) == ("c", registry_pb2.SEVERITY_CRITICAL)
    assert new.alert_id not in {a.alert_id for a in resolved}


def test_a_new_threshold_applies_to_firing_alerts_from_the_next_sample() -> None:
    e = evaluator(rule(threshold=80, duration_s=0))
    (fired,) = e.evaluate(sample(T0, gpu(temperature_c=85)))

    assert e.set_rules([rule(threshold=90, duration_s=0)], version=2, now=T0 + 1) == []
    (resolved,) = e.evaluate(sample(T0 + 2, gpu(temperature_c=85)))

    assert resolved.alert_id == fired.alert_id
    assert resolved.message == "resolved: temperature_c 85 no longer > 90"


def test_nothing_is_evaluated_before_the_first_rules() -> None:
    e = AlertEvaluator("node-1")

    assert e.evaluate(sample(T0, gpu(temperature_c=500))) == []
    assert e.registry_version is None


def test_adopted_alerts_resolve_under_their_own_id() -> None:
    before = evaluator(rule(duration_s=0))
    (fired,) = before.evaluate(sample(T0, gpu(temperature_c=90)))

    after = AlertEvaluator("node-1")
    after.adopt([fired])
    # Rules not known yet: nothing happens, the alert stays firing.
    assert after.evaluate(sample(T0 + 1, gpu(temperature_c=20))) == []
    assert after.active() == [fired]
    assert after.set_rules([rule(duration_s=0)], version=7, now=T0 + 2) == []
    (resolved,) = after.evaluate(sample(T0 + 3, gpu(temperature_c=20)))

    assert (resolved.alert_id, resolved.state) == (fired.alert_id, RESOLVED)


def test_adopted_alerts_of_rules_gone_meanwhile_resolve_with_the_first_rules() -> None:
    before = evaluator(rule(duration_s=0))
    (fired,) = before.evaluate(sample(T0, gpu(temperature_c=90)))
    after = AlertEvaluator("node-1")
    after.adopt([fired])

    (resolved,) = after.set_rules([], version=9, now=T0 + 1)

    assert (resolved.alert_id, resolved.message) == (fired.alert_id, "resolved: rule removed")


def test_unknown_metric_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    e = evaluator(rule("typo", metric="temprature_c", duration_s=0), rule(duration_s=0))

    (fired,) = e.evaluate(sample(T0, gpu(temperature_c=90)))
    e.evaluate(sample(T0 + 1, gpu(temperature_c=90)))

    assert fired.rule_name == "hot"
    warnings = [r for r in caplog.records if "unknown metric" in r.getMessage()]
    assert len(warnings) == 1  # once per rule, not per sample


def test_metric_names_are_the_proto_fields() -> None:
    numeric = {
        f.name
        for f in gpu_pb2.GpuDevice.DESCRIPTOR.fields
        if f.type in (f.TYPE_DOUBLE, f.TYPE_UINT32) and f.name != "index"
    }
    assert set(METRICS) == numeric | {"memory_used_percent"}
