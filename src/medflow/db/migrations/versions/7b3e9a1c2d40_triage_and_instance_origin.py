"""triage: the instance's recorded origin, the worker's cursor and pending studies, failures and
the reading worklist (issue 11)

Revision ID: 7b3e9a1c2d40
Revises: 5e1d0c7a9b42
Create Date: 2026-11-23 08:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "7b3e9a1c2d40"
down_revision = "5e1d0c7a9b42"
branch_labels = None
depends_on = None

BIG_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("instance", sa.Column("origin", sa.String(length=64), nullable=True))
    op.create_table(
        "triage_cursor",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "triage_pending",
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("last_change_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("study_uid"),
    )
    op.create_table(
        "triage_failure",
        sa.Column("pk", BIG_PK, autoincrement=True, nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("model_ref", sa.String(length=120), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_triage_failure_study_uid", "triage_failure", ["study_uid"])
    op.create_table(
        "worklist_item",
        sa.Column("pk", BIG_PK, autoincrement=True, nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("patient_name", sa.String(length=200), nullable=False),
        sa.Column("accession", sa.String(length=64), nullable=False),
        sa.Column("study_date", sa.String(length=8), nullable=False),
        sa.Column("modality", sa.String(length=64), nullable=False),
        sa.Column("body_part", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=200), nullable=False),
        sa.Column("model_ref", sa.String(length=120), nullable=False),
        sa.Column("finding", sa.String(length=100), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("sr_uid", sa.String(length=64), nullable=False),
        sa.Column("risk_assessment_id", sa.String(length=64), nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reader", sa.String(length=64), nullable=False),
        sa.Column("reader_finding", sa.String(length=100), nullable=False),
        sa.Column("reader_observation_id", sa.String(length=64), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("study_uid"),
    )
    op.create_index("ix_worklist_rank", "worklist_item", ["status", "priority", "probability"])


def downgrade() -> None:
    op.drop_index("ix_worklist_rank", table_name="worklist_item")
    op.drop_table("worklist_item")
    op.drop_index("ix_triage_failure_study_uid", table_name="triage_failure")
    op.drop_table("triage_failure")
    op.drop_table("triage_pending")
    op.drop_table("triage_cursor")
    with op.batch_alter_table("instance") as batch:
        batch.drop_column("origin")
