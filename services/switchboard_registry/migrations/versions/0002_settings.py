"""Registry-wide settings, one row each: the load-balancing setting (model
groups, breaker thresholds) of seed API 002's PUT /config/load-balancing.
And models created before Model.number existed get theirs, in creation order.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "settings",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )
    models = sa.table(
        "models",
        sa.column("name", sa.String),
        sa.column("spec", sa.JSON),
        sa.column("create_time", sa.DateTime),
    )
    connection = op.get_bind()
    rows = connection.execute(sa.select(models).order_by(models.c.create_time, models.c.name))
    for number, row in enumerate(rows.fetchall(), start=1):
        spec = dict(row.spec)
        # Numbers live in the spec (switchboard_registry/operations.py create_model).
        spec.setdefault("number", number)
        connection.execute(sa.update(models).where(models.c.name == row.name).values(spec=spec))


def downgrade() -> None:
    op.drop_table("settings")
