"""remote AE table (C-MOVE destinations and ``medflow send`` peers)

Revision ID: 6a4ce0f9d01c
Revises: 4cb9ce837c0d
Create Date: 2026-11-22 20:08:41.577554
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "6a4ce0f9d01c"
down_revision = "4cb9ce837c0d"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "remote_ae",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("ae_title", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("description", sa.String(length=400), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_remote_ae")),
        sa.UniqueConstraint("ae_title", name=op.f("uq_remote_ae_ae_title")),
    )


def downgrade() -> None:
    op.drop_table("remote_ae")
