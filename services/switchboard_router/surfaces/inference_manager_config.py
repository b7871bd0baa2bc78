"""Seed API 004's config routes: GET/PUT /api/config over the registry's
service settings (one per registry, audited in its change log). A field the
registry holds no value for answers null: each service then runs with its own
setting (its environment variable). What follows a change live is in the
README ("Moving from the inference service (004)")."""

from __future__ import annotations

import math
from typing import Any

import grpc
from google.api import httpbody_pb2

from switchboard.registry.v1 import registry_pb2
from switchboard.router.v1 import inference_manager_pb2 as pb
from switchboard_common.errors import R, SwitchboardError
from switchboard_router.surfaces.inference_manager_models import Models, body_of, rendered_as
from switchboard_router.surfaces.inference_manager_shapes import ValidationFailed, answer

Context = grpc.aio.ServicerContext[Any, Any]
# The document's whole-number fields, by the registry's field name.
WHOLE = {
    "gpu_monitor_interval": "gpu_monitor_interval_s",
    "max_concurrent_models": "max_concurrent_models",
    "default_model_timeout": "default_model_timeout_s",
    "health_check_interval": "health_check_interval_s",
}
THRESHOLDS = (
    "gpu_utilization_high",
    "gpu_temperature_high",
    "response_time_high",
    "error_rate_high",
)
LOG_LEVEL = "log_level"
ALERT_THRESHOLDS = "alert_thresholds"
_DOCUMENT_NAMES = {f"settings.{ours}": theirs for theirs, ours in WHOLE.items()}


def config_body(settings: registry_pb2.ServiceSettings) -> dict[str, Any]:
    out: dict[str, Any] = {
        theirs: getattr(settings, ours) if settings.HasField(ours) else None  # type: ignore[arg-type]
        for theirs, ours in WHOLE.items()
    }
    out[LOG_LEVEL] = settings.log_level or None
    thresholds = settings.alert_thresholds
    out[ALERT_THRESHOLDS] = {
        name: getattr(thresholds, name) if thresholds.HasField(name) else None  # type: ignore[arg-type]
        for name in THRESHOLDS
    }
    return out


def _number(field: str, value: Any, *, whole: bool) -> float | None:
    """A JSON number (or null: back to the service's own setting)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationFailed(field, f"{field} must be a number")
    if whole and value != int(value):
        raise ValidationFailed(field, f"{field} must be a whole number")
    return float(value)


def apply_body(settings: registry_pb2.ServiceSettings, body: dict[str, Any]) -> None:
    """Change the fields the body gives; the registry checks their ranges."""
    for key, value in body.items():
        if key in WHOLE:
            number = _number(key, value, whole=True)
            if number is None:
                settings.ClearField(WHOLE[key])  # type: ignore[arg-type]
            elif number < 0:
                raise ValidationFailed(key, f"{key} must be 1 or more")
            else:
                setattr(settings, WHOLE[key], int(number))
        elif key == LOG_LEVEL:
            if value is not None and not isinstance(value, str):
                raise ValidationFailed(key, "log_level must be a string")
            settings.log_level = (value or "").upper()
        elif key == ALERT_THRESHOLDS:
            if not isinstance(value, dict):
                raise ValidationFailed(key, "alert_thresholds must be an object")
            thresholds = settings.alert_thresholds
            for name, limit in value.items():
                field = f"{key}.{name}"
                if name not in THRESHOLDS:
                    raise ValidationFailed(field, f"unknown field {field}")
                number = _number(field, limit, whole=False)
                if number is None:
                    thresholds.ClearField(name)
                else:
                    setattr(thresholds, name, number)
        else:
            raise ValidationFailed(key, f"unknown field {key}")


class Config(Models):
    """InferenceManagerService's config RPCs (mixed into its servicer)."""

    registry: Any

    async def _settings(self) -> registry_pb2.ServiceSettings:
        got = await self._call(
            "registry", self.registry.GetServiceSettings, registry_pb2.GetServiceSettingsRequest()
        )
        return got.settings if got.HasField("settings") else registry_pb2.ServiceSettings()

    async def GetConfig(
        self, request: pb.GetConfigRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        with rendered_as():
            return answer(config_body(await self._settings()))

    async def UpdateConfig(
        self, request: pb.UpdateConfigRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        with rendered_as():
            body = body_of(request.body)
            settings = await self._settings()
            apply_body(settings, body)
            try:
                written = await self._call(
                    "registry",
                    self.registry.SetServiceSettings,
                    registry_pb2.SetServiceSettingsRequest(settings=settings),
                )
            except SwitchboardError as err:
                if err.reason != R.ERROR_REASON_INVALID_REQUEST or not err.param:
                    raise
                field = _DOCUMENT_NAMES.get(err.param, err.param.removeprefix("settings."))
                raise ValidationFailed(field, err.message.replace(err.param, field)) from None
            return answer(config_body(written.settings))
