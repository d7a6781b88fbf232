"""expected instance counts: header hints on the series, and series the node retrieved
(completion without waiting stable_age)

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expected", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("acquisition", sa.Integer(), nullable=True))
    op.create_table(
        "expectations",
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("series_uid"),
    )


def downgrade() -> None:
    op.drop_table("expectations")
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.drop_column("acquisition")
        batch_op.drop_column("expected")
