"""The registry's storage: SQLAlchemy 2 (async) over SQLite or PostgreSQL.

Every write runs in one transaction that bumps the registry version, writes
the entity and appends what changed to the change log, so a watcher that has
seen version N can be brought up to date from the log alone. Updates are
optimistic: an etag (the version that last wrote the entity) that no longer
matches fails with CONFLICT instead of overwriting someone else's change."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from google.protobuf import json_format
from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from switchboard.registry.v1 import registry_pb2 as pb
from switchboard_common.errors import R, SwitchboardError
from switchboard_registry import migrate, sqlite_driver, tables

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=Message)
# A row's config-file hash to write: a hash, None (the API wrote it), or False (leave as is).
SourceHash = str | Literal[False] | None
# How many versions of changes watchers can catch up from; older ones get a snapshot.
KEEP_CHANGES = 10_000


def database_url(url: str) -> str:
    """The async driver for a plain URL: CONTRACT.md's `postgresql://…` and `sqlite:///…`."""
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", f"sqlite+{sqlite_driver.DRIVER}://"),
        ("sqlite+aiosqlite://", f"sqlite+{sqlite_driver.DRIVER}://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


@dataclass(frozen=True)
class Entity:
    """How one kind of entity maps to its table and to a Change."""

    table: sa.Table
    key: str
    message: type[Message]
    change_field: str
    label: str
    # Output-only fields, cleared before the message is stored as `spec`.
    output_only: tuple[str, ...] = ("etag", "create_time", "update_time")
    columns: Callable[[Any], dict[str, object]] = lambda _m: {}


PROVIDERS = Entity(
    tables.providers,
    "name",
    pb.Provider,
    "provider",
    "provider",
    columns=lambda p: {"kind": pb.ProviderKind.Name(p.kind)},
)
MODELS = Entity(
    tables.models,
    "name",
    pb.Model,
    "model",
    "model",
    output_only=("etag", "create_time", "update_time", "deployments"),
    columns=lambda m: {"kind": pb.ModelKind.Name(m.kind), "online": m.online},
)
DEPLOYMENTS = Entity(
    tables.deployments,
    "id",
    pb.Deployment,
    "deployment",
    "deployment",
    output_only=("etag",),
    columns=lambda d: {"model": d.model, "provider": d.provider},
)
KEYS = Entity(
    tables.api_keys,
    "name",
    pb.ApiKey,
    "key",
    "API key",
    output_only=("etag", "create_time"),
    columns=lambda k: {"revoked": k.revoked},
)
ALERT_RULES = Entity(tables.alert_rules, "name", pb.AlertRule, "alert_rule", "alert rule")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _spec(entity: Entity, message: Message) -> dict[str, Any]:
    stored = type(message)()
    stored.CopyFrom(message)
    for name in entity.output_only:
        stored.ClearField(name)
    return json_format.MessageToDict(stored, preserving_proto_field_name=True)


def to_message(entity: Entity, row: sa.Row[Any]) -> Any:
    message: Any = json_format.ParseDict(row.spec, entity.message(), ignore_unknown_fields=True)
    setattr(message, entity.key, getattr(row, entity.key))
    message.etag = str(row.revision)
    descriptor = message.DESCRIPTOR.fields_by_name
    for stamp in ("create_time", "update_time"):
        if stamp in descriptor and hasattr(row, stamp):
            getattr(message, stamp).FromDatetime(_aware(getattr(row, stamp)))
    return message


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


@dataclass
class Tx:
    """One write transaction at one new version."""

    conn: AsyncConnection
    version: int
    now: dt.datetime
    changes: list[pb.Change] = field(default_factory=list)

    def record(self, kind: pb.Change.Kind.ValueType, entity: Entity, message: Message) -> None:
        change = pb.Change(kind=kind)
        getattr(change, entity.change_field).CopyFrom(message)
        self.changes.append(change)

    async def row(self, entity: Entity, key: str, *, lock: bool = False) -> sa.Row[Any] | None:
        query = sa.select(entity.table).where(entity.table.c[entity.key] == key)
        if lock and self.conn.dialect.name == "postgresql":
            query = query.with_for_update()
        return (await self.conn.execute(query)).first()

    async def require(self, entity: Entity, key: str, etag: str = "") -> sa.Row[Any]:
        row = await self.row(entity, key, lock=True)
        if row is None:
            raise SwitchboardError(
                R.ERROR_REASON_NOT_FOUND, f"no {entity.label} named {key!r}", param=entity.key
            )
        if etag and etag != str(row.revision):
            raise SwitchboardError(
                R.ERROR_REASON_CONFLICT,
                f"the {entity.label} {key!r} changed since you read it (etag {etag!r}, now "
                f"{row.revision}); read it again and reapply your change",
                param="etag",
            )
        return row

    async def insert(self, entity: Entity, message: Message, source_hash: str | None) -> None:
        values: dict[str, object] = {
            entity.key: getattr(message, entity.key),
            "spec": _spec(entity, message),
            "revision": self.version,
            "source_hash": source_hash,
            **entity.columns(message),
        }
        if "create_time" in entity.table.c:
            values["create_time"] = values["update_time"] = self.now
        await self.conn.execute(sa.insert(entity.table).values(**values))

    async def update(
        self, entity: Entity, message: Message, source_hash: SourceHash = False
    ) -> None:
        """Rewrite the entity; source_hash False leaves the stored one alone."""
        values: dict[str, object] = {
            "spec": _spec(entity, message),
            "revision": self.version,
            **entity.columns(message),
        }
        if source_hash is not False:
            values["source_hash"] = source_hash
        if "update_time" in entity.table.c:
            values["update_time"] = self.now
        await self.conn.execute(
            sa.update(entity.table)
            .where(entity.table.c[entity.key] == getattr(message, entity.key))
            .values(**values)
        )

    async def read(self, entity: Entity, key: str) -> Any:
        row = await self.row(entity, key)
        assert row is not None
        message = to_message(entity, row)
        if entity is MODELS:
            message.deployments.extend(await self.deployments_of(key))
        return message

    async def deployments_of(self, model: str) -> list[pb.Deployment]:
        return await _deployments_of(self.conn, model)


CLOSE_WAIT_S = 5.0
"""How long closing waits for connections hard-closed earlier to finish."""


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # SQLite has one writer; serialising writes here avoids "database is
        # locked" between this process's own transactions. PostgreSQL also
        # serialises on the version row, across registry replicas.
        self._write_lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._snapshot: pb.Snapshot | None = None
        # The newest version this process wrote, for watchers waiting on it.
        self._last_written = 0

    @classmethod
    async def open(cls, url: str) -> Store:
        url = database_url(url)
        if url.startswith("sqlite"):
            path = sa.engine.make_url(url).database
            if path and path != ":memory:":
                import pathlib

                pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, pool_pre_ping=True)
        if engine.dialect.name == "sqlite":
            sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        await migrate.upgrade(engine)
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()
        if isinstance(self.engine.dialect, sqlite_driver.SQLiteDialect):
            await self.engine.dialect.wait_stopped(CLOSE_WAIT_S)

    # -- versions and watchers -----------------------------------------------

    async def version(self) -> int:
        async with self.engine.connect() as conn:
            return int(
                (await conn.execute(sa.select(tables.registry_state.c.version))).scalar_one()
            )

    async def wait_changed(self, after: int, timeout_s: float) -> None:
        """Until a write in this process passes `after`, or timeout_s (a write
        by another registry replica is only seen by polling)."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self._last_written > after), timeout_s
                )

    async def changes_since(self, version: int) -> list[tuple[int, pb.Change]] | None:
        """Changes after `version`, oldest first; None when the log no longer
        reaches back that far (the watcher needs a snapshot)."""
        async with self.engine.connect() as conn:
            current = int(
                (await conn.execute(sa.select(tables.registry_state.c.version))).scalar_one()
            )
            if version >= current:
                return []
            oldest = (
                await conn.execute(sa.select(sa.func.min(tables.changes.c.version)))
            ).scalar_one()
            if oldest is None or oldest > version + 1:
                return None
            rows = await conn.execute(
                sa.select(tables.changes.c.version, tables.changes.c.change)
                .where(tables.changes.c.version > version)
                .order_by(tables.changes.c.version, tables.changes.c.seq)
            )
            return [(int(v), pb.Change.FromString(blob)) for v, blob in rows]

    async def snapshot(self) -> pb.Snapshot:
        async with self.engine.connect() as conn:
            version = int(
                (await conn.execute(sa.select(tables.registry_state.c.version))).scalar_one()
            )
            if self._snapshot is not None and self._snapshot.version == version:
                return self._snapshot
            snap = pb.Snapshot(version=version)
            snap.providers.extend(
                to_message(PROVIDERS, r)
                for r in await conn.execute(sa.select(tables.providers).order_by("name"))
            )
            by_model = await _deployments_by_model(conn)
            for r in await conn.execute(sa.select(tables.models).order_by("name")):
                model = to_message(MODELS, r)
                model.deployments.extend(by_model.get(r.name, []))
                snap.models.append(model)
            for r in await conn.execute(sa.select(tables.api_keys).order_by("name")):
                snap.keys.append(to_message(KEYS, r))
                if r.key_sha256 and not r.revoked:
                    snap.credentials.add(name=r.name, key_sha256=r.key_sha256)
            for r in await conn.execute(sa.select(tables.default_models).order_by("use")):
                snap.defaults.add(use=pb.ModelUse.Value(r.use), model=r.model)
            balancing = await read_load_balancing(conn)
            if balancing is not None:
                snap.load_balancing.CopyFrom(balancing)
            settings = await read_setting(conn, SERVICE_SETTINGS, pb.ServiceSettings())
            if settings is not None:
                snap.service_settings.CopyFrom(settings)
            snap.alert_rules.extend(
                to_message(ALERT_RULES, r)
                for r in await conn.execute(sa.select(tables.alert_rules).order_by("name"))
            )
        self._snapshot = snap
        return snap

    # -- writes --------------------------------------------------------------

    async def write(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        async with self._write_lock:
            try:
                async with self.engine.begin() as conn:
                    state = tables.registry_state
                    await conn.execute(
                        sa.update(state).where(state.c.id == 1).values(version=state.c.version + 1)
                    )
                    version = int(
                        (
                            await conn.execute(sa.select(state.c.version).where(state.c.id == 1))
                        ).scalar_one()
                    )
                    tx = Tx(conn, version, _now())
                    result = await fn(tx)
                    if tx.changes:
                        await conn.execute(
                            sa.insert(tables.changes),
                            [
                                {"version": version, "seq": i, "change": c.SerializeToString()}
                                for i, c in enumerate(tx.changes)
                            ],
                        )
                    if version % 100 == 0:
                        await conn.execute(
                            sa.delete(tables.changes).where(
                                tables.changes.c.version <= version - KEEP_CHANGES
                            )
                        )
            except sa.exc.IntegrityError as exc:
                # The explicit checks run first; this is a concurrent writer
                # (another replica) winning the race.
                raise SwitchboardError(
                    R.ERROR_REASON_CONFLICT,
                    "a concurrent change conflicted with this one; read again and retry",
                ) from exc
        async with self._changed:
            self._last_written = version
            self._changed.notify_all()
        return result

    # -- reads ---------------------------------------------------------------

    async def get(self, entity: Entity, key: str) -> Any:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(entity.table).where(entity.table.c[entity.key] == key))
            ).first()
            if row is None and entity is MODELS:
                # Aliases resolve too.
                owner = (
                    await conn.execute(
                        sa.select(tables.model_names.c.model).where(
                            tables.model_names.c.name == key
                        )
                    )
                ).scalar_one_or_none()
                if owner is not None:
                    row = (
                        await conn.execute(
                            sa.select(tables.models).where(tables.models.c.name == owner)
                        )
                    ).first()
            if row is None:
                raise SwitchboardError(
                    R.ERROR_REASON_NOT_FOUND, f"no {entity.label} named {key!r}", param="name"
                )
            message = to_message(entity, row)
            if entity is MODELS:
                message.deployments.extend(await _deployments_of(conn, row.name))
            return message

    async def list_all(
        self, entity: Entity, where: Sequence[sa.ColumnElement[bool]] = ()
    ) -> list[Any]:
        async with self.engine.connect() as conn:
            rows = list(
                await conn.execute(
                    sa.select(entity.table).where(*where).order_by(entity.table.c[entity.key])
                )
            )
            messages = [to_message(entity, r) for r in rows]
            if entity is MODELS:
                by_model = await _deployments_by_model(conn)
                for m in messages:
                    m.deployments.extend(by_model.get(m.name, []))
            return messages

    async def load_balancing(self) -> pb.LoadBalancing | None:
        async with self.engine.connect() as conn:
            return await read_load_balancing(conn)

    async def setting(self, name: str, message: SettingT) -> SettingT | None:
        async with self.engine.connect() as conn:
            return await read_setting(conn, name, message)

    async def defaults(self) -> list[pb.DefaultModel]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(tables.default_models).order_by("use"))
            return [pb.DefaultModel(use=pb.ModelUse.Value(r.use), model=r.model) for r in rows]


LOAD_BALANCING = "load_balancing"


SERVICE_SETTINGS = "service_settings"
SettingT = TypeVar("SettingT", pb.LoadBalancing, pb.ServiceSettings)


async def read_setting(conn: AsyncConnection, name: str, message: SettingT) -> SettingT | None:
    """One registry-wide setting (its etag: the version that last wrote it)."""
    table = tables.settings
    row = (await conn.execute(sa.select(table).where(table.c.name == name))).first()
    if row is None:
        return None
    json_format.ParseDict(row.spec, message, ignore_unknown_fields=True)
    message.etag = str(row.revision)
    return message


async def read_load_balancing(conn: AsyncConnection) -> pb.LoadBalancing | None:
    return await read_setting(conn, LOAD_BALANCING, pb.LoadBalancing())


async def _deployments_of(conn: AsyncConnection, model: str) -> list[pb.Deployment]:
    rows = await conn.execute(
        sa.select(tables.deployments)
        .where(tables.deployments.c.model == model)
        .order_by(tables.deployments.c.id)
    )
    return [to_message(DEPLOYMENTS, row) for row in rows]


async def _deployments_by_model(conn: AsyncConnection) -> dict[str, list[pb.Deployment]]:
    by_model: dict[str, list[pb.Deployment]] = {}
    for r in await conn.execute(sa.select(tables.deployments).order_by("id")):
        by_model.setdefault(r.model, []).append(to_message(DEPLOYMENTS, r))
    return by_model


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
