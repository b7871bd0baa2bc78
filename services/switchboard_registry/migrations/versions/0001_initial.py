"""The registry's first schema: providers, models (with their names and
aliases), deployments, API keys, default models, alert rules, the version
counter and the change log.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _entity(name: str, *columns: sa.Column[object]) -> None:
    op.create_table(
        name,
        *columns,
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("source_hash", sa.String(64)),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    )


def upgrade() -> None:
    op.create_table(
        "registry_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(
        sa.table(
            "registry_state", sa.column("id", sa.Integer), sa.column("version", sa.BigInteger)
        ),
        [{"id": 1, "version": 0}],
    )
    op.create_table(
        "changes",
        sa.Column("version", sa.BigInteger, primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("change", sa.LargeBinary, nullable=False),
    )
    _entity(
        "providers",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
    )
    _entity(
        "models",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("online", sa.Boolean, nullable=False),
    )
    op.create_table(
        "model_names",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column(
            "model",
            sa.String(128),
            sa.ForeignKey("models.name", ondelete="CASCADE"),
            nullable=False,
        ),
    )
    _entity(
        "deployments",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column(
            "model",
            sa.String(128),
            sa.ForeignKey("models.name", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "provider",
            sa.String(128),
            sa.ForeignKey("providers.name", ondelete="RESTRICT"),
            nullable=False,
        ),
    )
    op.create_index("deployments_by_model", "deployments", ["model"])
    op.create_index("deployments_by_provider", "deployments", ["provider"])
    _entity(
        "api_keys",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("key_sha256", sa.String(64), unique=True),
        sa.Column("revoked", sa.Boolean, nullable=False),
    )
    op.create_table(
        "default_models",
        sa.Column("use", sa.String(32), primary_key=True),
        sa.Column(
            "model",
            sa.String(128),
            sa.ForeignKey("models.name", ondelete="RESTRICT"),
            nullable=False,
        ),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )
    _entity("alert_rules", sa.Column("name", sa.String(128), primary_key=True))


def downgrade() -> None:
    for table in (
        "alert_rules",
        "default_models",
        "api_keys",
        "deployments",
        "model_names",
        "models",
        "providers",
        "changes",
        "registry_state",
    ):
        op.drop_table(table)
