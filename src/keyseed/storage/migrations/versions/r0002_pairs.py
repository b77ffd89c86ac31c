"""Pair keys: the admin's pair policies and each pair's sealed state.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "pair_policies",
        sa.Column("lo", sa.String(64), primary_key=True),
        sa.Column("hi", sa.String(64), primary_key=True),
        sa.Column("allowed", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    op.create_table(
        "pairs",
        sa.Column("lo", sa.String(64), primary_key=True),
        sa.Column("hi", sa.String(64), primary_key=True),
        sa.Column("pair_id", sa.LargeBinary(16), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("initiator", sa.String(64), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("state", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_pairs_pair_id", "pairs", ["pair_id"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_pairs_pair_id", table_name="pairs")
    op.drop_table("pairs")
    op.drop_table("pair_policies")
