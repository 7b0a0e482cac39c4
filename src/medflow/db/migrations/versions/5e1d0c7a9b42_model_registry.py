"""model registry: ml_model_version

Revision ID: 5e1d0c7a9b42
Revises: cf6868bd527b
Create Date: 2026-11-23 06:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "5e1d0c7a9b42"
down_revision = "cf6868bd527b"  # the label index (issue 10, same release); before it 98d272ddcbe1
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ml_model_version",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("architecture", sa.String(length=64), nullable=False),
        sa.Column("input_spec", sa.Text(), nullable=False),
        sa.Column("metrics", sa.Text(), nullable=False),
        sa.Column("label_set", sa.String(length=200), nullable=True),
        sa.Column("label_set_version", sa.Integer(), nullable=True),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=False),
        sa.Column("cohort_id", sa.BigInteger(), nullable=True),
        sa.Column("lineage", sa.Text(), nullable=False),
        sa.Column("code_version", sa.String(length=100), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("weights_sha256", sa.String(length=64), nullable=False),
        sa.Column("blobs", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_ml_model_version")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_ml_model_version_name_version")),
    )
    with op.batch_alter_table("ml_model_version", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ml_model_version_name"), ["name"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ml_model_version", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ml_model_version_name"))
    op.drop_table("ml_model_version")
