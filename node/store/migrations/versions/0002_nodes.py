"""nodes sharing the index: which node holds each series and instance, and the nodes'
addresses (workers on other hosts fetch from them)

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("data_dir", sa.Text(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("seen_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    for table in ("series", "instances"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("node", sa.String(length=64), nullable=False, server_default="")
            )


def downgrade() -> None:
    for table in ("instances", "series"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("node")
    op.drop_table("nodes")
