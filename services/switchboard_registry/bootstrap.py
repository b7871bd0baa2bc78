"""Apply the config file (SWITCHBOARD_CONFIG) to the registry at start.

The rules, when the file and API edits disagree (also in the README):
- An entry the registry does not have is created.
- An entry is rewritten from the file only when the file's entry itself
  changed since it was last applied (each row keeps a hash of the entry that
  wrote it). So an API edit survives restarts until someone edits that entry
  in the file; then the file wins for the fields the file sets.
- Nothing is deleted because the file stopped listing it: it is kept and
  logged, and deleted through the admin API.
- A revoked key stays revoked, whatever the file says.
- `defaults` fill only uses that have no default yet.
All of it happens in one transaction: one new registry version, or none when
nothing changed."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel

from switchboard.registry.v1 import registry_pb2 as pb
from switchboard_common.config import SwitchboardConfig
from switchboard_common.logs import log_fields
from switchboard_common.registry_snapshot import (
    DEPLOYMENT_FILE_FIELDS,
    KEY_FILE_FIELDS,
    MODEL_FILE_FIELDS,
    PROVIDER_FILE_FIELDS,
    USES,
    deployment_message,
    key_message,
    model_message,
    provider_message,
)
from switchboard_registry import operations as ops
from switchboard_registry import tables
from switchboard_registry.store import DEPLOYMENTS, KEYS, MODELS, PROVIDERS, Entity, Store, Tx

log = logging.getLogger(__name__)


class _Unchanged(Exception):
    """Roll the bootstrap transaction back: the file changed nothing."""


# Model fields added after file entries were first hashed (seed API 001/002's): left
# out of the hash while an entry does not set them, so that adding them does not
# make every stored entry look edited (and the file overwrite API edits).
_LATER_FIELDS = frozenset(
    {"icon_url", "keyword", "release_date", "default_parameters", "number", "created_at",
     "updated_at"}
)  # fmt: skip


def entry_hash(*parts: BaseModel | str | None) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, BaseModel):
            unset = {f for f in _LATER_FIELDS if f in type(part).model_fields}
            text = part.model_dump_json(exclude=unset - part.model_fields_set)
        else:
            text = str(part)
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()


async def apply_config(store: Store, config: SwitchboardConfig) -> int:
    """Apply the file; returns how many entities it created or rewrote."""
    try:
        return await store.write(lambda tx: _apply(tx, config))
    except _Unchanged:
        return 0


async def _stored_hash(tx: Tx, entity: Entity, key: str) -> tuple[bool, str | None]:
    row = await tx.row(entity, key)
    return (row is not None, row.source_hash if row is not None else None)


async def _apply(tx: Tx, config: SwitchboardConfig) -> int:
    applied = 0
    for p in config.providers:
        digest = entry_hash(p)
        exists, stored = await _stored_hash(tx, PROVIDERS, p.name)
        if not exists:
            await ops.create_provider(tx, provider_message(p), digest)
        elif stored != digest:
            await ops.update_provider(tx, provider_message(p), PROVIDER_FILE_FIELDS, digest)
        else:
            continue
        applied += 1

    # Models first without fallbacks (they may name models created later in the file).
    changed: list[tuple[Any, str]] = []
    for m in config.models:
        digest = entry_hash(m.model_copy(update={"deployments": []}))
        exists, stored = await _stored_hash(tx, MODELS, m.name)
        if not exists:
            message = model_message(m)
            message.ClearField("fallbacks")
            await ops.create_model(tx, message, digest)
        elif stored == digest:
            continue
        changed.append((m, digest))
    for m, digest in changed:
        await ops.update_model(tx, model_message(m), MODEL_FILE_FIELDS, digest)
        applied += 1

    for m in config.models:
        for d in m.deployments:
            deployment = deployment_message(m.name, d)
            digest = entry_hash(d, m.name)
            exists, stored = await _stored_hash(tx, DEPLOYMENTS, deployment.id)
            if not exists:
                await ops.create_deployment(tx, deployment, digest)
            elif stored != digest:
                await ops.update_deployment(tx, deployment, DEPLOYMENT_FILE_FIELDS, digest)
            else:
                continue
            applied += 1

    for k in config.keys or []:
        secret_sha256 = k.secret_sha256()
        digest = entry_hash(k, secret_sha256)
        key = key_message(k)
        exists, stored = await _stored_hash(tx, KEYS, k.name)
        if not exists:
            await ops.create_key(
                tx, key, secret_sha256=secret_sha256, display_prefix="", source_hash=digest
            )
        elif stored != digest:
            await ops.update_key(tx, key, KEY_FILE_FIELDS, digest, secret_sha256)
        else:
            continue
        if secret_sha256 is None:
            log.warning(
                "key has no secret: its environment variable is unset",
                extra=log_fields(key=k.name, key_env=k.key_env),
            )
        applied += 1

    for use, model in config.defaults.items():
        table = tables.default_models
        current = (
            await tx.conn.execute(
                sa.select(table.c.model).where(table.c.use == pb.ModelUse.Name(USES[use]))
            )
        ).scalar_one_or_none()
        if current is None:
            await ops.set_default(tx, USES[use], model)
            applied += 1

    await _report_unlisted(tx, config)
    if not applied:
        raise _Unchanged
    log.info("config file applied", extra=log_fields(entries=applied, version=tx.version))
    return applied


async def _report_unlisted(tx: Tx, config: SwitchboardConfig) -> None:
    listed = {
        "provider": {p.name for p in config.providers},
        "model": {m.name for m in config.models},
        "deployment": {d.resolved_id(m.name) for m in config.models for d in m.deployments},
        "key": {k.name for k in config.keys or []},
    }
    for label, table, key in (
        ("provider", tables.providers, "name"),
        ("model", tables.models, "name"),
        ("deployment", tables.deployments, "id"),
        ("key", tables.api_keys, "name"),
    ):
        rows = await tx.conn.execute(
            sa.select(table.c[key]).where(table.c.source_hash.is_not(None))
        )
        for name in rows.scalars():
            if name not in listed[label]:
                log.warning(
                    "kept an entry the config file no longer lists; delete it through the "
                    "admin API if it should go",
                    extra=log_fields(kind=label, name=name),
                )
