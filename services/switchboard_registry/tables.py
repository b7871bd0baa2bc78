"""The registry's tables. Identity, relations and filterable fields are real
columns (so the database enforces uniqueness and references); the rest of each
entity is its protobuf message as JSON in `spec`, readable with psql/sqlite3.

Every write bumps `registry_state.version`; the entity's `revision` is the
version that last wrote it (its etag), and `changes` logs what each version
changed so watchers can follow without reloading everything."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()


def _times() -> list[sa.Column[object]]:
    return [
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    ]


registry_state = sa.Table(
    "registry_state",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
)

changes = sa.Table(
    "changes",
    metadata,
    sa.Column("version", sa.BigInteger, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    # A serialized switchboard.registry.v1.Change.
    sa.Column("change", sa.LargeBinary, nullable=False),
)

providers = sa.Table(
    "providers",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
    # The hash of the config-file entry last applied; NULL when only the API wrote it.
    sa.Column("source_hash", sa.String(64)),
    *_times(),
)

models = sa.Table(
    "models",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("online", sa.Boolean, nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("source_hash", sa.String(64)),
    *_times(),
)

# Names and aliases share one namespace, so a request's model resolves to one model.
model_names = sa.Table(
    "model_names",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column(
        "model", sa.String(128), sa.ForeignKey("models.name", ondelete="CASCADE"), nullable=False
    ),
)

deployments = sa.Table(
    "deployments",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column(
        "model", sa.String(128), sa.ForeignKey("models.name", ondelete="CASCADE"), nullable=False
    ),
    sa.Column(
        "provider",
        sa.String(128),
        sa.ForeignKey("providers.name", ondelete="RESTRICT"),
        nullable=False,
    ),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("source_hash", sa.String(64)),
    *_times(),
    sa.Index("deployments_by_model", "model"),
    sa.Index("deployments_by_provider", "provider"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    # NULL for a config-file key whose environment variable is unset.
    sa.Column("key_sha256", sa.String(64), unique=True),
    sa.Column("revoked", sa.Boolean, nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("source_hash", sa.String(64)),
    *_times(),
)

default_models = sa.Table(
    "default_models",
    metadata,
    sa.Column("use", sa.String(32), primary_key=True),
    sa.Column(
        "model", sa.String(128), sa.ForeignKey("models.name", ondelete="RESTRICT"), nullable=False
    ),
    sa.Column("revision", sa.BigInteger, nullable=False),
)

# Registry-wide settings, one row each (e.g. "load_balancing"): the protobuf
# message as JSON in `spec`.
settings = sa.Table(
    "settings",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
)

alert_rules = sa.Table(
    "alert_rules",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("source_hash", sa.String(64)),
    *_times(),
)
