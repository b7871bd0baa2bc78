"""Seed API 004's alert rules (/api/config/alerts) over the registry's
AlertRule, which the gpu services evaluate. The document's `condition`
("gpu_utilization > 90") is parsed strictly into metric, comparator and
threshold; its `name` is free text (the rule's display_name) and the rule's
key is a generated id. Rules over model metrics (response_time in seconds,
error_rate a fraction) are evaluated per model, over a window of live traffic,
by the same gpu services (switchboard_gpu.model_alerts)."""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from google.api import httpbody_pb2
from google.protobuf import duration_pb2

from switchboard.registry.v1 import registry_pb2 as rpb
from switchboard.router.v1 import inference_manager_pb2 as pb
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.gpu_metrics import GPU_METRIC_FIELDS, MODEL_METRIC_NAMES
from switchboard_router.surfaces import surface
from switchboard_router.surfaces.inference_manager_models import NAME, Models, body_of
from switchboard_router.surfaces.inference_manager_shapes import (
    ValidationFailed,
    answer,
    error,
    page_of,
    timestamp,
)

Context = grpc.aio.ServicerContext[Any, Any]
# The document's metric names, and the gpu service's own (GpuDevice's readings).
ALIASES = {
    "gpu_utilization": "utilization_gpu_percent",
    "gpu_memory_utilization": "memory_used_percent",
    "gpu_memory_used": "memory_used_mib",
    "gpu_temperature": "temperature_c",
    "gpu_power": "power_w",
}
GPU_METRICS = frozenset((*GPU_METRIC_FIELDS, "memory_used_percent"))
MODEL_METRICS = frozenset(MODEL_METRIC_NAMES)
_BY_METRIC = {metric: alias for alias, metric in ALIASES.items()}
_CONDITION = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*([<>])\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*$"
)
_COMPARATORS = {">": rpb.COMPARATOR_GREATER_THAN, "<": rpb.COMPARATOR_LESS_THAN}
_SYMBOLS = {v: k for k, v in _COMPARATORS.items()}
SEVERITIES = {
    "info": rpb.SEVERITY_INFO,
    "warning": rpb.SEVERITY_WARNING,
    "critical": rpb.SEVERITY_CRITICAL,
}
_SEVERITY_NAMES = {v: k for k, v in SEVERITIES.items()}
MAX_NAME = 256
MAX_DURATION_S = 86_400
# The registry's field names, as the document's.
_DOCUMENT_FIELDS = {
    "rule.display_name": "name",
    "rule.metric": "condition",
    "rule.comparator": "condition",
    "rule.threshold": "condition",
    "rule.severity": "severity",
    "rule.duration": "duration",
    "rule.notification_channels": "notification_channels",
}


def parse_condition(text: Any, rule: rpb.AlertRule) -> None:
    """`<metric> > <number>` or `<`; nothing else."""
    if not isinstance(text, str):
        raise ValidationFailed(
            "condition", "condition must be a string like 'gpu_utilization > 90'"
        )
    match = _CONDITION.match(text)
    if match is None:
        raise ValidationFailed(
            "condition", f"condition {text[:100]!r} is not '<metric> > <number>' or '<'"
        )
    name, symbol, number = match.groups()
    metric = ALIASES.get(name, name)
    if metric not in GPU_METRICS and metric not in MODEL_METRICS:
        known = ", ".join(sorted((*ALIASES, *GPU_METRICS, *MODEL_METRICS)))
        raise ValidationFailed("condition", f"unknown metric {name!r}; known: {known}")
    rule.metric = metric
    rule.comparator = _COMPARATORS[symbol]
    rule.threshold = float(number)


def condition_of(rule: rpb.AlertRule) -> str:
    return (
        f"{_BY_METRIC.get(rule.metric, rule.metric)} "
        f"{_SYMBOLS.get(rule.comparator, '?')} {rule.threshold:g}"
    )


def apply_body(rule: rpb.AlertRule, body: dict[str, Any], *, creating: bool) -> None:
    if creating:
        for field in ("name", "condition"):
            if field not in body:
                raise ValidationFailed(field, f"{field} is required")
    for key, value in body.items():
        if key == "name":
            if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
                raise ValidationFailed(key, f"name must be text of 1 to {MAX_NAME} characters")
            rule.display_name = value
        elif key == "condition":
            parse_condition(value, rule)
        elif key == "severity":
            if value not in SEVERITIES:
                raise ValidationFailed(key, "severity must be info, warning or critical")
            rule.severity = SEVERITIES[value]
        elif key == "enabled":
            if not isinstance(value, bool):
                raise ValidationFailed(key, "enabled must be true or false")
            rule.enabled = value
        elif key == "notification_channels":
            if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
                raise ValidationFailed(key, "notification_channels must be a list of names")
            del rule.notification_channels[:]
            rule.notification_channels.extend(dict.fromkeys(value))
        elif key == "duration":
            if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
                raise ValidationFailed(key, "duration must be a whole number of seconds")
            if not 0 <= value <= MAX_DURATION_S:
                raise ValidationFailed(key, f"duration must be 0 to {MAX_DURATION_S} seconds")
            rule.duration.CopyFrom(duration_pb2.Duration(seconds=int(value)))
        else:
            raise ValidationFailed(key, f"unknown field {key}")
    if creating and not rule.severity:
        rule.severity = rpb.SEVERITY_WARNING


def rule_body(rule: rpb.AlertRule) -> dict[str, Any]:
    def when(ts: Any, field: str) -> str | None:
        return timestamp(ts.ToDatetime(dt.UTC)) if rule.HasField(field) else None  # type: ignore[arg-type]

    return {
        "id": rule.name,
        "name": rule.display_name or rule.name,
        "condition": condition_of(rule),
        "severity": _SEVERITY_NAMES.get(rule.severity, "warning"),
        "enabled": rule.enabled if rule.HasField("enabled") else True,
        "notification_channels": list(rule.notification_channels),
        "duration": rule.duration.seconds,
        "created_at": when(rule.create_time, "create_time"),
        "updated_at": when(rule.update_time, "update_time"),
    }


@contextmanager
def _rendered(alert_id: str = "") -> Iterator[None]:
    """The document's error body; an unknown rule is NOT_FOUND with its id."""

    def render(err: SwitchboardError) -> tuple[int, dict[str, Any]]:
        status, body = error(err)
        if err.reason == R.ERROR_REASON_NOT_FOUND:
            body["error"]["code"] = "NOT_FOUND"
            body["error"]["details"] = {"alert_id": alert_id}
        return status, body

    surface.enter(NAME)
    with surface.rendered(render):
        try:
            yield
        except SwitchboardError as err:
            field = _DOCUMENT_FIELDS.get(err.param or "")
            if err.reason != R.ERROR_REASON_INVALID_REQUEST or field is None:
                raise
            raise ValidationFailed(field, err.message.replace(err.param or "", field)) from None


class Alerts(Models):
    """InferenceManagerService's alert-rule RPCs (mixed into its servicer)."""

    registry: Any

    async def _rules(self) -> list[rpb.AlertRule]:
        got = await self._call(
            "registry", self.registry.ListAlertRules, rpb.ListAlertRulesRequest()
        )
        return list(got.rules)

    async def _rule(self, alert_id: str) -> rpb.AlertRule:
        for rule in await self._rules():
            if rule.name == alert_id:
                return rule
        raise SwitchboardError(R.ERROR_REASON_NOT_FOUND, f"no alert rule {alert_id!r}")

    async def _update(self, rule: rpb.AlertRule) -> httpbody_pb2.HttpBody:
        rule.ClearField("create_time")
        rule.ClearField("update_time")
        got = await self._call(
            "registry", self.registry.UpdateAlertRule, rpb.UpdateAlertRuleRequest(rule=rule)
        )
        return answer(rule_body(got.rule))

    async def ListConfigAlerts(
        self, request: pb.ListConfigAlertsRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        with _rendered():
            rules = [rule_body(r) for r in await self._rules()]
            return answer(page_of(rules, request.page, request.size))

    async def CreateConfigAlert(
        self, request: pb.CreateConfigAlertRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        with _rendered():
            rule = rpb.AlertRule(name=f"alert-{secrets.token_hex(6)}")
            apply_body(rule, body_of(request.body), creating=True)
            got = await self._call(
                "registry", self.registry.CreateAlertRule, rpb.CreateAlertRuleRequest(rule=rule)
            )
            await context.send_initial_metadata((("x-switchboard-http-status", "201"),))
            return answer(rule_body(got.rule))

    async def UpdateConfigAlert(
        self, request: pb.UpdateConfigAlertRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        with _rendered(request.alert_id):
            rule = await self._rule(request.alert_id)
            apply_body(rule, body_of(request.body), creating=False)
            return await self._update(rule)

    async def EnableConfigAlert(
        self, request: pb.EnableConfigAlertRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        with _rendered(request.alert_id):
            rule = await self._rule(request.alert_id)
            rule.enabled = True
            return await self._update(rule)

    async def DisableConfigAlert(
        self, request: pb.DisableConfigAlertRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        with _rendered(request.alert_id):
            rule = await self._rule(request.alert_id)
            rule.enabled = False
            return await self._update(rule)

    async def DeleteConfigAlert(
        self, request: pb.DeleteConfigAlertRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        with _rendered(request.alert_id):
            await self._call(
                "registry",
                self.registry.DeleteAlertRule,
                rpb.DeleteAlertRuleRequest(name=request.alert_id),
            )
            return answer({"message": "告警规则删除成功", "id": request.alert_id})
