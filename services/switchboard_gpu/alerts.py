"""Alert rules (from the registry) evaluated against each sample.

A rule is evaluated per GPU: its condition must hold on every sample for its
duration, measured in sample time, before the alert fires (duration 0 fires on
the first sample). The first sample on which it no longer holds resolves it.
Both are events with the same alert_id.

What counts as evidence:
- a reading NVML did not give (or a GPU missing from the sample, or NVML down)
  proves nothing: a firing alert stays firing, and a pending one starts over,
  since the condition was not seen to hold throughout;
- a rule deleted or disabled resolves its alerts at once ("rule removed");
- a rule whose metric, comparator or severity changed is a new rule: its old
  alerts resolve and it starts over. A changed threshold or duration applies
  from the next sample, to the alerts already firing too.

Rules over model metrics (MODEL_METRICS: seed 004's response_time, in
seconds, and error_rate, a fraction) are evaluated per model on the traffic of
a recent window (evaluate_models, from the usage ledger; see model_alerts),
with the same duration and resolution rules; a model with no traffic left in
the window resolves its alert, since its condition no longer holds.

The evaluator is plain synchronous code with no clock of its own: time is the
sample's sample_time (or the caller's `now`), so tests drive it with scripts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from google.protobuf import timestamp_pb2

from switchboard.gpu.v1 import gpu_pb2
from switchboard.registry.v1 import registry_pb2
from switchboard.usage.v1 import usage_pb2
from switchboard_common.gpu_metrics import GPU_METRIC_FIELDS, MODEL_METRIC_NAMES
from switchboard_common.ids import uuid7
from switchboard_common.logs import log_fields

log = logging.getLogger(__name__)

Reader = Callable[[gpu_pb2.GpuDevice], float | None]


def _field(name: str) -> Reader:
    def read(device: gpu_pb2.GpuDevice) -> float | None:
        # The names are the proto's own optional fields (see METRICS).
        return float(getattr(device, name)) if device.HasField(name) else None  # type: ignore[arg-type]

    return read


def _memory_used_percent(device: gpu_pb2.GpuDevice) -> float | None:
    if not device.HasField("memory_used_mib") or not device.HasField("memory_total_mib"):
        return None
    if device.memory_total_mib == 0:
        return None
    return 100.0 * device.memory_used_mib / device.memory_total_mib


# The metrics a rule (and a history query) may name: GpuDevice's numeric
# fields, and memory_used_percent derived from two of them.
METRICS: dict[str, Reader] = {name: _field(name) for name in GPU_METRIC_FIELDS}
METRICS["memory_used_percent"] = _memory_used_percent


def _response_time_s(model: usage_pb2.ModelPerformance) -> float | None:
    # The mean latency of the successful requests; none succeeded, no reading.
    if model.total_requests * model.success_rate <= 0:
        return None
    return model.latency_ms.average / 1000


def _error_rate(model: usage_pb2.ModelPerformance) -> float | None:
    return model.error_rate if model.total_requests > 0 else None


ModelReader = Callable[[usage_pb2.ModelPerformance], float | None]
MODEL_METRICS: dict[str, ModelReader] = {
    "response_time": _response_time_s,
    "error_rate": _error_rate,
}
if tuple(MODEL_METRICS) != MODEL_METRIC_NAMES:  # named once, for the rule parsers
    raise RuntimeError("MODEL_METRICS and gpu_metrics.MODEL_METRIC_NAMES differ")
_MODEL = "model:"

_SYMBOL = {registry_pb2.COMPARATOR_GREATER_THAN: ">", registry_pb2.COMPARATOR_LESS_THAN: "<"}


def _seconds(ts: timestamp_pb2.Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def to_timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """Exact to the nanosecond that `seconds` can hold: `int(seconds * 1e9)`
    would lose a few hundred nanoseconds at today's epoch."""
    whole = math.floor(seconds)
    nanos = min(round((seconds - whole) * 1e9), 999_999_999)
    return timestamp_pb2.Timestamp(seconds=whole, nanos=nanos)


def _duration_s(rule: registry_pb2.AlertRule) -> float:
    return rule.duration.seconds + rule.duration.nanos / 1e9


def _holds(rule: registry_pb2.AlertRule, value: float) -> bool:
    if rule.comparator == registry_pb2.COMPARATOR_GREATER_THAN:
        return value > rule.threshold
    if rule.comparator == registry_pb2.COMPARATOR_LESS_THAN:
        return value < rule.threshold
    return False


def enabled(rule: registry_pb2.AlertRule) -> bool:
    return not rule.HasField("enabled") or rule.enabled


def _identity(rule: registry_pb2.AlertRule) -> tuple[str, int, int]:
    return (rule.metric, rule.comparator, rule.severity)


def _device_key(device: gpu_pb2.GpuDevice) -> str:
    return device.uuid or f"index:{device.index}"


def _subject_key(alert: gpu_pb2.GpuAlert) -> str:
    if alert.model:
        return _MODEL + alert.model
    return alert.gpu_uuid or f"index:{alert.gpu_index}"


def is_model_rule(rule: registry_pb2.AlertRule) -> bool:
    return rule.metric in MODEL_METRICS


@dataclass
class _Track:
    """One rule on one GPU: pending (since) or firing (alert)."""

    since: float
    alert: gpu_pb2.GpuAlert | None = None


class AlertEvaluator:
    def __init__(self, hostname: str, *, new_id: Callable[[], str] = uuid7) -> None:
        self.hostname = hostname
        self._new_id = new_id
        self._rules: dict[str, registry_pb2.AlertRule] = {}
        # None until the first set_rules: alerts adopted from before a restart
        # must not resolve as "rule removed" just because no rules arrived yet.
        self.registry_version: int | None = None
        self._tracks: dict[tuple[str, str], _Track] = {}
        self._unknown_metric_warned: set[tuple[str, str]] = set()
        # The sample being evaluated: events carry its time exactly.
        self._sample_time: timestamp_pb2.Timestamp | None = None

    @property
    def rules(self) -> list[registry_pb2.AlertRule]:
        return list(self._rules.values())

    def active(self) -> list[gpu_pb2.GpuAlert]:
        return [t.alert for t in self._tracks.values() if t.alert is not None]

    def adopt(self, alerts: Iterable[gpu_pb2.GpuAlert]) -> None:
        """Take back alerts that were firing before a restart, so they resolve
        (with their own alert_id) instead of firing a second time."""
        for alert in alerts:
            key = (alert.rule_name, _subject_key(alert))
            self._tracks[key] = _Track(since=_seconds(alert.start_time), alert=alert)

    def set_rules(
        self, rules: Sequence[registry_pb2.AlertRule], version: int, now: float
    ) -> list[gpu_pb2.GpuAlert]:
        """Replace the rules; returns the resolutions of alerts whose rule went
        away, was disabled or became a different rule."""
        new = {r.name: r for r in rules if enabled(r)}
        events = []
        for key, track in list(self._tracks.items()):
            rule = new.get(key[0])
            if track.alert is not None:
                fired_as = (track.alert.metric, track.alert.comparator, track.alert.severity)
                same = rule is not None and _identity(rule) == fired_as
            else:
                old = self._rules.get(key[0])
                same = rule is not None and old is not None and _identity(rule) == _identity(old)
            if same:
                continue
            del self._tracks[key]
            if track.alert is not None:
                why = "rule removed" if rule is None else "rule changed"
                events.append(self._resolve(track.alert, track.alert.value, now, why))
        self._rules = new
        self.registry_version = version
        return events

    def evaluate(self, status: gpu_pb2.NodeStatus) -> list[gpu_pb2.GpuAlert]:
        """The transitions `status` causes, in rule order."""
        if self.registry_version is None:
            return []
        now = _seconds(status.sample_time)
        self._sample_time = status.sample_time
        devices = list(status.devices) if status.nvml_state == gpu_pb2.NVML_STATE_AVAILABLE else []
        seen: set[tuple[str, str]] = set()
        events: list[gpu_pb2.GpuAlert] = []
        for rule in self._rules.values():
            if is_model_rule(rule):
                continue  # evaluate_models
            read = METRICS.get(rule.metric)
            if read is None:
                self._warn_unknown(rule)
                continue
            for device in devices:
                key = (rule.name, _device_key(device))
                value = read(device)
                if value is None:
                    continue  # no evidence either way; see the module docstring
                seen.add(key)
                subject = gpu_pb2.GpuAlert(gpu_uuid=device.uuid, gpu_index=device.index)
                event = self._step(rule, subject, key, value, now)
                if event is not None:
                    events.append(event)
        for key in [
            k
            for k, t in self._tracks.items()
            if k not in seen and t.alert is None and not k[1].startswith(_MODEL)
        ]:
            # Pending without a reading this sample: it did not hold throughout.
            del self._tracks[key]
        return events

    def evaluate_models(
        self, performance: Mapping[str, usage_pb2.ModelPerformance], now: float
    ) -> list[gpu_pb2.GpuAlert]:
        """The transitions the traffic of the last window (per model) causes."""
        if self.registry_version is None:
            return []
        self._sample_time = None
        seen: set[tuple[str, str]] = set()
        events: list[gpu_pb2.GpuAlert] = []
        for rule in self._rules.values():
            read = MODEL_METRICS.get(rule.metric)
            if read is None:
                continue
            for model, figures in sorted(performance.items()):
                key = (rule.name, _MODEL + model)
                value = read(figures)
                if value is None:
                    continue
                seen.add(key)
                event = self._step(rule, gpu_pb2.GpuAlert(model=model), key, value, now)
                if event is not None:
                    events.append(event)
        for key, track in list(self._tracks.items()):
            if key in seen or not key[1].startswith(_MODEL):
                continue
            del self._tracks[key]
            if track.alert is not None:
                # No traffic left in the window: the condition no longer holds.
                events.append(self._resolve(track.alert, 0.0, now, "no traffic in the window"))
        return events

    def _step(
        self,
        rule: registry_pb2.AlertRule,
        subject: gpu_pb2.GpuAlert,
        key: tuple[str, str],
        value: float,
        now: float,
    ) -> gpu_pb2.GpuAlert | None:
        track = self._tracks.get(key)
        if not _holds(rule, value):
            if track is None:
                return None
            del self._tracks[key]
            if track.alert is None:
                return None
            symbol = _SYMBOL.get(rule.comparator, "?")
            return self._resolve(
                track.alert,
                value,
                now,
                f"{rule.metric} {value:g} no longer {symbol} {rule.threshold:g}",
            )
        if track is None:
            track = self._tracks[key] = _Track(since=now)
        if track.alert is not None or now - track.since < _duration_s(rule):
            return None
        track.alert = self._fire(rule, subject, value, now, now - track.since)
        return track.alert

    def _fire(
        self,
        rule: registry_pb2.AlertRule,
        subject: gpu_pb2.GpuAlert,
        value: float,
        now: float,
        held_s: float,
    ) -> gpu_pb2.GpuAlert:
        """subject: the GPU (gpu_uuid, gpu_index) or the model it fires on."""
        on = f" on model {subject.model}" if subject.model else ""
        alert = gpu_pb2.GpuAlert(
            alert_id=self._new_id(),
            rule_name=rule.name,
            metric=rule.metric,
            hostname=self.hostname,
            gpu_uuid=subject.gpu_uuid,
            gpu_index=subject.gpu_index,
            model=subject.model,
            state=gpu_pb2.ALERT_STATE_FIRING,
            severity=rule.severity,
            value=value,
            threshold=rule.threshold,
            comparator=rule.comparator,
            message=(
                f"{rule.metric} {value:g} {_SYMBOL.get(rule.comparator, '?')} "
                f"{rule.threshold:g}{on} for {held_s:g}s"
            ),
        )
        alert.time.CopyFrom(self._time(now))
        alert.start_time.CopyFrom(alert.time)
        log.warning(
            "gpu alert firing",
            extra=log_fields(
                alert_id=alert.alert_id,
                rule=rule.name,
                gpu=subject.gpu_uuid,
                model=subject.model,
                message=alert.message,
            ),
        )
        return alert

    def _resolve(
        self, firing: gpu_pb2.GpuAlert, value: float, now: float, why: str
    ) -> gpu_pb2.GpuAlert:
        alert = gpu_pb2.GpuAlert()
        alert.CopyFrom(firing)
        alert.state = gpu_pb2.ALERT_STATE_RESOLVED
        alert.value = value
        alert.message = f"resolved: {why}"
        alert.time.CopyFrom(self._time(now))
        log.info(
            "gpu alert resolved",
            extra=log_fields(alert_id=alert.alert_id, rule=alert.rule_name, message=alert.message),
        )
        return alert

    def _time(self, now: float) -> timestamp_pb2.Timestamp:
        sample = self._sample_time
        if sample is not None and _seconds(sample) == now:
            return sample
        return to_timestamp(now)

    def _warn_unknown(self, rule: registry_pb2.AlertRule) -> None:
        key = (rule.name, rule.metric)
        if key not in self._unknown_metric_warned:
            self._unknown_metric_warned.add(key)
            log.warning(
                "alert rule names an unknown metric; it is not evaluated",
                extra=log_fields(rule=rule.name, metric=rule.metric, known=sorted(METRICS)),
            )
