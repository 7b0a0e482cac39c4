"""similar images: ml_embedding, its models' generations, the embedding worker's cursor and
failures (issue 11)

Revision ID: 9560d6736839
Revises: 7b3e9a1c2d40
Create Date: 2026-11-23 10:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "9560d6736839"
down_revision = "7b3e9a1c2d40"  # triage (issue 11, same release); before it 5e1d0c7a9b42
branch_labels = None
depends_on = None

BIG_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ml_embedding",
        sa.Column("pk", BIG_PK, autoincrement=True, nullable=False),
        sa.Column("model_ref", sa.String(length=120), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("frame", sa.Integer(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_ml_embedding")),
        sa.UniqueConstraint(
            "model_ref",
            "sop_instance_uid",
            "frame",
            name=op.f("uq_ml_embedding_model_ref_sop_instance_uid_frame"),
        ),
        sqlite_autoincrement=True,  # keys never reused: the index tells vectors by key
    )
    op.create_index(op.f("ix_ml_embedding_model_ref_patient_id"), "ml_embedding",
                    ["model_ref", "patient_id"], unique=False)  # fmt: skip
    op.create_index(op.f("ix_ml_embedding_model_ref_study_uid"), "ml_embedding",
                    ["model_ref", "study_uid"], unique=False)  # fmt: skip
    op.create_index(op.f("ix_ml_embedding_sop_instance_uid"), "ml_embedding",
                    ["sop_instance_uid"], unique=False)  # fmt: skip
    op.create_table(
        "ml_embedding_model",
        sa.Column("model_ref", sa.String(length=120), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model_ref", name=op.f("pk_ml_embedding_model")),
    )
    op.create_table(
        "ml_embedding_cursor",
        sa.Column("name", sa.String(length=160), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_ml_embedding_cursor")),
    )
    op.create_table(
        "ml_embedding_failure",
        sa.Column("pk", BIG_PK, autoincrement=True, nullable=False),
        sa.Column("model_ref", sa.String(length=120), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_ml_embedding_failure")),
        sa.UniqueConstraint("model_ref", "sop_instance_uid",
                            name=op.f("uq_ml_embedding_failure_model_ref_sop_instance_uid")),
    )  # fmt: skip
    op.create_index(op.f("ix_ml_embedding_failure_sop_instance_uid"), "ml_embedding_failure",
                    ["sop_instance_uid"], unique=False)  # fmt: skip


def downgrade() -> None:
    op.drop_index(op.f("ix_ml_embedding_failure_sop_instance_uid"),
                  table_name="ml_embedding_failure")  # fmt: skip
    op.drop_table("ml_embedding_failure")
    op.drop_table("ml_embedding_cursor")
    op.drop_table("ml_embedding_model")
    op.drop_index(op.f("ix_ml_embedding_sop_instance_uid"), table_name="ml_embedding")
    op.drop_index(op.f("ix_ml_embedding_model_ref_study_uid"), table_name="ml_embedding")
    op.drop_index(op.f("ix_ml_embedding_model_ref_patient_id"), table_name="ml_embedding")
    op.drop_table("ml_embedding")
