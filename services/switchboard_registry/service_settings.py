"""The services' operational settings (one per registry; seed API 004's
/api/config): written whole through SetServiceSettings, audited in the change
log like every write, and followed by the services through the snapshot."""

from __future__ import annotations

import math

import sqlalchemy as sa
from google.protobuf import json_format

from switchboard.registry.v1 import registry_pb2 as pb
from switchboard_common.errors import R, SwitchboardError
from switchboard_registry import tables
from switchboard_registry.store import SERVICE_SETTINGS, Tx, read_setting
from switchboard_registry.validation import invalid

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# (field, least, most) for the whole-number settings, in seconds or models.
_BOUNDS = (
    ("gpu_monitor_interval_s", 1, 86_400),
    ("max_concurrent_models", 1, 1_000),
    ("default_model_timeout_s", 1, 86_400),
    ("health_check_interval_s", 1, 86_400),
)
# (field, most) for the thresholds; each is at least 0.
_THRESHOLDS = (
    ("gpu_utilization_high", 100.0),
    ("gpu_temperature_high", 200.0),
    ("response_time_high", 3_600.0),
    ("error_rate_high", 1.0),
)


async def set_service_settings(tx: Tx, settings: pb.ServiceSettings) -> pb.ServiceSettings:
    existing = await read_setting(tx.conn, SERVICE_SETTINGS, pb.ServiceSettings())
    if settings.etag and existing is not None and settings.etag != existing.etag:
        raise SwitchboardError(
            R.ERROR_REASON_CONFLICT,
            f"the service settings changed since you read them (etag {existing.etag}); "
            "read them again and reapply your change",
            param="etag",
        )
    validate(settings)
    settings.ClearField("etag")
    spec = json_format.MessageToDict(settings, preserving_proto_field_name=True)
    table = tables.settings
    if existing is None:
        await tx.conn.execute(
            sa.insert(table).values(name=SERVICE_SETTINGS, spec=spec, revision=tx.version)
        )
    else:
        await tx.conn.execute(
            sa.update(table)
            .where(table.c.name == SERVICE_SETTINGS)
            .values(spec=spec, revision=tx.version)
        )
    settings.etag = str(tx.version)
    tx.changes.append(pb.Change(kind=pb.Change.KIND_UPSERT, service_settings=settings))
    return settings


def validate(settings: pb.ServiceSettings) -> None:
    for name, least, most in _BOUNDS:
        if settings.HasField(name) and not least <= getattr(settings, name) <= most:  # type: ignore[arg-type]
            raise invalid(f"settings.{name}", f"must be between {least} and {most}")
    if settings.log_level and settings.log_level not in LOG_LEVELS:
        raise invalid("settings.log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    thresholds = settings.alert_thresholds
    for key, top in _THRESHOLDS:
        if not thresholds.HasField(key):  # type: ignore[arg-type]
            continue
        value = getattr(thresholds, key)
        if not math.isfinite(value) or not 0 <= value <= top:
            raise invalid(f"settings.alert_thresholds.{key}", f"must be between 0 and {top:g}")
