"""The registry's load-balancing setting (one per registry): a model group whose
calls are spread over its models by weight, and the circuit breakers'
thresholds. Written through SetLoadBalancing (and seed API 002's
PUT /config/load-balancing); routers follow it like every other change."""

from __future__ import annotations

import math

import sqlalchemy as sa
from google.protobuf import json_format

from switchboard.registry.v1 import registry_pb2 as pb
from switchboard_common.errors import R, SwitchboardError
from switchboard_registry import tables
from switchboard_registry.store import LOAD_BALANCING, MODELS, Tx, read_load_balancing
from switchboard_registry.validation import check_name, invalid

STRATEGIES = (pb.ROUTING_STRATEGY_WEIGHTED_RANDOM, pb.ROUTING_STRATEGY_ROUND_ROBIN)
DEFAULT_GROUP = "auto"
MAX_MEMBERS = 100
MAX_THRESHOLD = 1000


async def current(tx: Tx) -> pb.LoadBalancing | None:
    return await read_load_balancing(tx.conn)


async def set_load_balancing(tx: Tx, lb: pb.LoadBalancing) -> pb.LoadBalancing:
    existing = await current(tx)
    if lb.etag and existing is not None and lb.etag != existing.etag:
        raise SwitchboardError(
            R.ERROR_REASON_CONFLICT,
            f"the load-balancing setting changed since you read it (etag {existing.etag}); "
            "read it again and reapply your change",
            param="etag",
        )
    lb.group = lb.group or DEFAULT_GROUP
    lb.strategy = lb.strategy or pb.ROUTING_STRATEGY_WEIGHTED_RANDOM
    await _validate(tx, lb)
    lb.ClearField("etag")
    spec = json_format.MessageToDict(lb, preserving_proto_field_name=True)
    table = tables.settings
    if existing is None:
        await tx.conn.execute(
            sa.insert(table).values(name=LOAD_BALANCING, spec=spec, revision=tx.version)
        )
    else:
        await tx.conn.execute(
            sa.update(table)
            .where(table.c.name == LOAD_BALANCING)
            .values(spec=spec, revision=tx.version)
        )
    lb.etag = str(tx.version)
    tx.changes.append(pb.Change(kind=pb.Change.KIND_UPSERT, load_balancing=lb))
    return lb


async def _validate(tx: Tx, lb: pb.LoadBalancing) -> None:
    check_name("load_balancing.group", lb.group)
    taken = (
        await tx.conn.execute(
            sa.select(tables.model_names.c.model).where(tables.model_names.c.name == lb.group)
        )
    ).first()
    if taken is not None:
        raise invalid("load_balancing.group", f"{lb.group!r} is already a model's name or alias")
    if lb.strategy not in STRATEGIES:
        raise invalid("load_balancing.strategy", "must be weighted_random or round_robin")
    if len(lb.weights) > MAX_MEMBERS:
        raise invalid("load_balancing.weights", f"at most {MAX_MEMBERS} models")
    for name, weight in lb.weights.items():
        field = f"load_balancing.weights.{name}"
        if not math.isfinite(weight) or weight < 0:
            raise invalid(field, "must be 0 or more")
        model = await tx.row(MODELS, name)
        if model is None:
            raise invalid(field, f"no model named {name!r}")
        if model.kind != pb.ModelKind.Name(pb.MODEL_KIND_CHAT):
            raise invalid(field, f"{name!r} is not a chat model")
    if lb.weights and not any(w > 0 for w in lb.weights.values()):
        raise invalid("load_balancing.weights", "at least one model needs a weight above 0")
    for name in ("failure_threshold", "recovery_threshold"):
        if getattr(lb, name) > MAX_THRESHOLD:
            raise invalid(f"load_balancing.{name}", f"at most {MAX_THRESHOLD} (0: the default)")
    if lb.health_check_interval_s > 86_400:
        raise invalid("load_balancing.health_check_interval_s", "at most 86400 seconds")


async def members(tx: Tx) -> list[str]:
    """The models the load-balancing group spreads over (they cannot be deleted)."""
    lb = await current(tx)
    return list(lb.weights) if lb is not None else []
