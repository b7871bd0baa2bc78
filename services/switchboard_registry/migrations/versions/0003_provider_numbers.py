"""Providers created before Provider.number existed get theirs, in creation
order (the Bisheng LLM API's server ids).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    providers = sa.table(
        "providers",
        sa.column("name", sa.String),
        sa.column("spec", sa.JSON),
        sa.column("create_time", sa.DateTime),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(providers).order_by(providers.c.create_time, providers.c.name)
    )
    for number, row in enumerate(rows.fetchall(), start=1):
        spec = dict(row.spec)
        # Numbers live in the spec (switchboard_registry/operations.py create_provider).
        spec.setdefault("number", number)
        connection.execute(
            sa.update(providers).where(providers.c.name == row.name).values(spec=spec)
        )


def downgrade() -> None:
    """Numbers stay in the specs; older code ignores them."""
