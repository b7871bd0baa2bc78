"""What the registry can do to its entities, with the rules that span tables:
references resolve, names and aliases are unique, a provider in use cannot go,
a model another one falls back to cannot go. The API and the config bootstrap
both come through here."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from switchboard.registry.v1 import registry_pb2 as pb
from switchboard_common.config import deployment_id
from switchboard_common.errors import R, SwitchboardError
from switchboard_registry import load_balancing, tables, validation
from switchboard_registry.store import (
    ALERT_RULES,
    DEPLOYMENTS,
    KEYS,
    MODELS,
    PROVIDERS,
    Entity,
    SourceHash,
    Tx,
    to_message,
)
from switchboard_registry.validation import invalid

M = TypeVar("M", bound=Message)

UPSERT = pb.Change.KIND_UPSERT
DELETE = pb.Change.KIND_DELETE
SECRET_PREFIX = "sb-"  # noqa: S105 - a label, not a secret
DISPLAY_PREFIX_LENGTH = 10

# Fields a client may never set through an update: identity and output-only ones.
_FIXED = {
    "provider": {"name", "etag", "create_time", "update_time"},
    "model": {"name", "etag", "create_time", "update_time", "deployments"},
    "deployment": {"id", "model", "etag"},
    "key": {"name", "display_prefix", "revoked", "etag", "create_time", "revoke_time"},
}


def mask_paths(
    patch: Any, mask: field_mask_pb2.FieldMask, entity: str, fixed: set[str] | None = None
) -> list[str]:
    """The fields an update changes. Without a mask, every field the request
    populated (AIP-134): `{"online": false}` works because `online` has presence."""
    fixed = _FIXED[entity] if fixed is None else fixed
    if mask.paths:
        paths = list(mask.paths)
        names = patch.DESCRIPTOR.fields_by_name
        for path in paths:
            top = path.split(".")[0]
            if top not in names:
                raise invalid("update_mask", f"{entity} has no field {path!r}")
            if top in fixed:
                raise invalid("update_mask", f"{entity}.{top} cannot be changed")
        return paths
    return [f.name for f, _ in patch.ListFields() if f.name not in fixed]


def merge(current: Any, patch: Any, paths: Sequence[str]) -> Any:
    merged = type(current)()
    merged.CopyFrom(current)
    if paths:
        field_mask_pb2.FieldMask(paths=list(paths)).MergeMessage(
            patch, merged, replace_message_field=True, replace_repeated_field=True
        )
    return merged


# -- providers -----------------------------------------------------------------


def provider_defaults(p: pb.Provider) -> None:
    p.timeout_s = p.timeout_s or 60.0
    p.connect_timeout_s = p.connect_timeout_s or 5.0


async def create_provider(tx: Tx, p: pb.Provider, source_hash: str | None = None) -> pb.Provider:
    provider_defaults(p)
    validation.provider(p)
    if await tx.row(PROVIDERS, p.name) is not None:
        raise _exists(PROVIDERS, p.name)
    # The stable integer id (the Bisheng API's server id), as models' numbers.
    p.number = 1 + max((other.number for other in await _all(tx, PROVIDERS)), default=0)
    await tx.insert(PROVIDERS, p, source_hash)
    return await _upserted(tx, PROVIDERS, p.name, pb.Provider)


async def update_provider(
    tx: Tx, patch: pb.Provider, paths: Sequence[str], source_hash: SourceHash = False
) -> pb.Provider:
    row = await tx.require(PROVIDERS, patch.name, patch.etag)
    current = await tx.read(PROVIDERS, row.name)
    merged = merge(current, patch, paths)
    if "kind" in paths and merged.kind != current.kind:
        raise invalid("provider.kind", "cannot change; create a new provider instead")
    merged.number = current.number
    validation.provider(merged)
    await tx.update(PROVIDERS, merged, source_hash)
    return await _upserted(tx, PROVIDERS, merged.name, pb.Provider)


async def delete_provider(tx: Tx, name: str, etag: str = "") -> None:
    await tx.require(PROVIDERS, name, etag)
    users = (
        await tx.conn.execute(
            sa.select(tables.deployments.c.id)
            .where(tables.deployments.c.provider == name)
            .order_by(tables.deployments.c.id)
        )
    ).scalars()
    in_use = list(users)
    if in_use:
        raise SwitchboardError(
            R.ERROR_REASON_FAILED_PRECONDITION,
            f"provider {name!r} is used by {len(in_use)} deployment(s) "
            f"({', '.join(in_use[:5])}{', …' if len(in_use) > 5 else ''}); "
            "delete or move them first",
            param="name",
        )
    await tx.conn.execute(sa.delete(tables.providers).where(tables.providers.c.name == name))
    tx.record(DELETE, PROVIDERS, pb.Provider(name=name))


# -- models --------------------------------------------------------------------


async def create_model(tx: Tx, m: pb.Model, source_hash: str | None = None) -> pb.Model:
    if not m.kind:
        m.kind = pb.MODEL_KIND_CHAT
    if not m.HasField("online"):
        m.online = True
    if not m.pricing.currency:
        m.pricing.currency = "USD"
    validation.model(m)
    if await tx.row(MODELS, m.name) is not None:
        raise _exists(MODELS, m.name)
    await _claim_names(tx, m.name, [m.name, *m.aliases])
    await _check_fallbacks(tx, m)
    # The stable integer id some client APIs need (seed API 001): one more than
    # any model holds. It lives in the spec and no update changes it.
    m.number = 1 + max((other.number for other in await _all(tx, MODELS)), default=0)
    await tx.insert(MODELS, m, source_hash)
    await _write_names(tx, m)
    return await _upserted(tx, MODELS, m.name, pb.Model)


async def update_model(
    tx: Tx, patch: pb.Model, paths: Sequence[str], source_hash: SourceHash = False
) -> pb.Model:
    row = await tx.require(MODELS, patch.name, patch.etag)
    current = await tx.read(MODELS, row.name)
    current.ClearField("deployments")
    merged = merge(current, patch, paths)
    if "kind" in paths and merged.kind != current.kind:
        raise invalid("model.kind", "cannot change; create a new model instead")
    merged.number = current.number
    validation.model(merged)
    if list(merged.aliases) != list(current.aliases):
        await _claim_names(tx, merged.name, list(merged.aliases))
    await _check_fallbacks(tx, merged)
    await tx.update(MODELS, merged, source_hash)
    await _write_names(tx, merged)
    return await _upserted(tx, MODELS, merged.name, pb.Model)


async def delete_model(tx: Tx, name: str, etag: str = "") -> None:
    await tx.require(MODELS, name, etag)
    dependants = [m.name for m in await _all(tx, MODELS) if name in m.fallbacks and m.name != name]
    if dependants:
        raise SwitchboardError(
            R.ERROR_REASON_FAILED_PRECONDITION,
            f"model {name!r} is a fallback of {', '.join(dependants)}; remove it there first",
            param="name",
        )
    uses = (
        await tx.conn.execute(
            sa.select(tables.default_models.c.use).where(tables.default_models.c.model == name)
        )
    ).scalars()
    defaults = list(uses)
    if defaults:
        raise SwitchboardError(
            R.ERROR_REASON_FAILED_PRECONDITION,
            f"model {name!r} is the default for {', '.join(defaults)}; set another default first",
            param="name",
        )
    if name in await load_balancing.members(tx):
        raise SwitchboardError(
            R.ERROR_REASON_FAILED_PRECONDITION,
            f"model {name!r} is in the load-balancing group; take it out there first",
            param="name",
        )
    deployments = await tx.deployments_of(name)
    await tx.conn.execute(sa.delete(tables.deployments).where(tables.deployments.c.model == name))
    await tx.conn.execute(sa.delete(tables.model_names).where(tables.model_names.c.model == name))
    await tx.conn.execute(sa.delete(tables.models).where(tables.models.c.name == name))
    for d in deployments:
        tx.record(DELETE, DEPLOYMENTS, pb.Deployment(id=d.id, model=name))
    tx.record(DELETE, MODELS, pb.Model(name=name))


async def _claim_names(tx: Tx, model: str, names: list[str]) -> None:
    for i, name in enumerate(names):
        owner = (
            await tx.conn.execute(
                sa.select(tables.model_names.c.model).where(tables.model_names.c.name == name)
            )
        ).scalar_one_or_none()
        if owner is not None and owner != model:
            field = "model.name" if i == 0 and name == model else "model.aliases"
            raise SwitchboardError(
                R.ERROR_REASON_ALREADY_EXISTS,
                f"{field}: {name!r} is already a name or alias of model {owner!r}",
                param=field,
            )


async def _write_names(tx: Tx, m: pb.Model) -> None:
    await tx.conn.execute(sa.delete(tables.model_names).where(tables.model_names.c.model == m.name))
    await tx.conn.execute(
        sa.insert(tables.model_names),
        [{"name": n, "model": m.name} for n in [m.name, *m.aliases]],
    )


async def _check_fallbacks(tx: Tx, m: pb.Model) -> None:
    for i, name in enumerate(m.fallbacks):
        row = await tx.row(MODELS, name)
        if row is None:
            raise invalid(f"model.fallbacks[{i}]", f"no model named {name!r}")
        if row.kind != pb.ModelKind.Name(m.kind):
            raise invalid(
                f"model.fallbacks[{i}]",
                f"{name!r} is a {row.kind.removeprefix('MODEL_KIND_').lower()} model, "
                f"not {pb.ModelKind.Name(m.kind).removeprefix('MODEL_KIND_').lower()}",
            )


# -- deployments ----------------------------------------------------------------


async def create_deployment(
    tx: Tx, d: pb.Deployment, source_hash: str | None = None
) -> pb.Deployment:
    if not d.id and d.model and d.provider and d.upstream_model:
        d.id = deployment_id(d.model, d.provider, d.upstream_model)
    if not d.HasField("enabled"):
        d.enabled = True
    if d.weight == 0:
        # Unset weight means an even share; a deployment is drained with enabled=false.
        d.weight = 1
    validation.deployment(d)
    await _check_deployment_refs(tx, d)
    if await tx.row(DEPLOYMENTS, d.id) is not None:
        raise _exists(DEPLOYMENTS, d.id)
    await tx.insert(DEPLOYMENTS, d, source_hash)
    return await _upserted(tx, DEPLOYMENTS, d.id, pb.Deployment)


async def update_deployment(
    tx: Tx, patch: pb.Deployment, paths: Sequence[str], source_hash: SourceHash = False
) -> pb.Deployment:
    row = await tx.require(DEPLOYMENTS, patch.id, patch.etag)
    merged = merge(await tx.read(DEPLOYMENTS, row.id), patch, paths)
    validation.deployment(merged)
    await _check_deployment_refs(tx, merged)
    await tx.update(DEPLOYMENTS, merged, source_hash)
    return await _upserted(tx, DEPLOYMENTS, merged.id, pb.Deployment)


async def delete_deployment(tx: Tx, deployment_id: str, etag: str = "") -> None:
    row = await tx.require(DEPLOYMENTS, deployment_id, etag)
    await tx.conn.execute(
        sa.delete(tables.deployments).where(tables.deployments.c.id == deployment_id)
    )
    tx.record(DELETE, DEPLOYMENTS, pb.Deployment(id=deployment_id, model=row.model))


async def _check_deployment_refs(tx: Tx, d: pb.Deployment) -> None:
    if await tx.row(MODELS, d.model) is None:
        raise SwitchboardError(
            R.ERROR_REASON_NOT_FOUND, f"deployment.model: no model named {d.model!r}", param="model"
        )
    if await tx.row(PROVIDERS, d.provider) is None:
        raise invalid("deployment.provider", f"no provider named {d.provider!r}")


# -- API keys ----------------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


async def create_key(
    tx: Tx,
    k: pb.ApiKey,
    *,
    secret_sha256: str | None,
    display_prefix: str,
    source_hash: str | None = None,
) -> pb.ApiKey:
    k.revoked = False
    k.ClearField("revoke_time")
    k.display_prefix = display_prefix
    validation.api_key(k)
    await _check_key_models(tx, k)
    if await tx.row(KEYS, k.name) is not None:
        raise _exists(KEYS, k.name)
    await tx.insert(KEYS, k, source_hash)
    await _set_sha(tx, k.name, secret_sha256)
    return await _upserted_key(tx, k.name)


async def update_key(
    tx: Tx,
    patch: pb.ApiKey,
    paths: Sequence[str],
    source_hash: SourceHash = False,
    secret_sha256: str | Literal[False] | None = False,
) -> pb.ApiKey:
    row = await tx.require(KEYS, patch.name, patch.etag)
    merged = merge(await tx.read(KEYS, row.name), patch, paths)
    validation.api_key(merged)
    await _check_key_models(tx, merged)
    await tx.update(KEYS, merged, source_hash)
    if secret_sha256 is not False:
        await _set_sha(tx, merged.name, secret_sha256)
    return await _upserted_key(tx, merged.name)


async def revoke_key(tx: Tx, name: str) -> pb.ApiKey:
    row = await tx.require(KEYS, name)
    key = await tx.read(KEYS, row.name)
    if not key.revoked:
        key.revoked = True
        key.revoke_time.FromDatetime(tx.now)
        await tx.update(KEYS, key)
    return await _upserted_key(tx, name)


async def _set_sha(tx: Tx, name: str, digest: str | None) -> None:
    if digest is not None:
        clash = (
            await tx.conn.execute(
                sa.select(tables.api_keys.c.name).where(
                    tables.api_keys.c.key_sha256 == digest, tables.api_keys.c.name != name
                )
            )
        ).scalar_one_or_none()
        if clash is not None:
            raise SwitchboardError(
                R.ERROR_REASON_ALREADY_EXISTS,
                f"key.name: key {name!r} has the same secret as key {clash!r}",
                param="name",
            )
    await tx.conn.execute(
        sa.update(tables.api_keys).where(tables.api_keys.c.name == name).values(key_sha256=digest)
    )


async def _upserted_key(tx: Tx, name: str) -> pb.ApiKey:
    key = await _upserted(tx, KEYS, name, pb.ApiKey)
    row = await tx.row(KEYS, name)
    assert row is not None
    if row.key_sha256 and not row.revoked:
        tx.record(UPSERT, _CREDENTIALS, pb.ApiKeyCredential(name=name, key_sha256=row.key_sha256))
    else:
        tx.record(DELETE, _CREDENTIALS, pb.ApiKeyCredential(name=name))
    return key


async def _check_key_models(tx: Tx, k: pb.ApiKey) -> None:
    for i, name in enumerate(k.models):
        owner = (
            await tx.conn.execute(
                sa.select(tables.model_names.c.model).where(tables.model_names.c.name == name)
            )
        ).scalar_one_or_none()
        if owner is None:
            raise invalid(f"key.models[{i}]", f"no model named {name!r}")
        if owner != name:
            raise invalid(f"key.models[{i}]", f"{name!r} is an alias: name the model {owner!r}")


# Credentials are never read back through the API; the Entity only names the Change field.
_CREDENTIALS = Entity(tables.api_keys, "name", pb.ApiKeyCredential, "credential", "credential")


# -- defaults and alert rules ---------------------------------------------------------


async def set_default(tx: Tx, use: pb.ModelUse.ValueType, model: str) -> pb.DefaultModel:
    if use == pb.MODEL_USE_UNSPECIFIED:
        raise invalid(
            "use",
            "is required: knowledge_base, assistant, evaluation, workflow, chat, vision, "
            "embedding, asr, tts, rerank or image",
        )
    if await tx.row(MODELS, model) is None:
        raise invalid("model", f"no model named {model!r}")
    name = pb.ModelUse.Name(use)
    table = tables.default_models
    exists = (await tx.conn.execute(sa.select(table).where(table.c.use == name))).first()
    if exists is None:
        await tx.conn.execute(sa.insert(table).values(use=name, model=model, revision=tx.version))
    else:
        await tx.conn.execute(
            sa.update(table).where(table.c.use == name).values(model=model, revision=tx.version)
        )
    default = pb.DefaultModel(use=use, model=model)
    tx.changes.append(pb.Change(kind=UPSERT, default_model=default))
    return default


async def create_alert_rule(
    tx: Tx, rule: pb.AlertRule, source_hash: str | None = None
) -> pb.AlertRule:
    if not rule.HasField("enabled"):
        rule.enabled = True
    validation.alert_rule(rule)
    if await tx.row(ALERT_RULES, rule.name) is not None:
        raise _exists(ALERT_RULES, rule.name)
    await tx.insert(ALERT_RULES, rule, source_hash)
    return await _upserted(tx, ALERT_RULES, rule.name, pb.AlertRule)


async def update_alert_rule(tx: Tx, rule: pb.AlertRule) -> pb.AlertRule:
    await tx.require(ALERT_RULES, rule.name, rule.etag)
    if not rule.HasField("enabled"):
        rule.enabled = True
    validation.alert_rule(rule)
    await tx.update(ALERT_RULES, rule)
    return await _upserted(tx, ALERT_RULES, rule.name, pb.AlertRule)


async def delete_alert_rule(tx: Tx, name: str) -> None:
    await tx.require(ALERT_RULES, name)
    await tx.conn.execute(sa.delete(tables.alert_rules).where(tables.alert_rules.c.name == name))
    tx.record(DELETE, ALERT_RULES, pb.AlertRule(name=name))


# -- helpers ----------------------------------------------------------------------------


async def _upserted(tx: Tx, entity: Entity, key: str, kind: type[M]) -> M:
    message: M = await tx.read(entity, key)
    tx.record(UPSERT, entity, message)
    return message


async def _all(tx: Tx, entity: Entity) -> list[Any]:
    rows = await tx.conn.execute(sa.select(entity.table))
    return [to_message(entity, r) for r in rows]


def _exists(entity: Entity, key: str) -> SwitchboardError:
    return SwitchboardError(
        R.ERROR_REASON_ALREADY_EXISTS,
        f"{entity.label} {key!r} already exists",
        param=entity.key,
    )
