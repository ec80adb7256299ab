"""Metadata write-back: the outbox of local metadata edits.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 09:00:00.000000
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
        "metadata_edit",
        sa.Column("message_id", sa.String(length=128), nullable=False),
        sa.Column("thread_id", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("base", sa.JSON(), nullable=False),
        sa.Column("desired", sa.JSON(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("conflict", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("message_id"),
    )
    with op.batch_alter_table("metadata_edit", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_metadata_edit_state"), ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_metadata_edit_thread_id"), ["thread_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("metadata_edit", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_metadata_edit_thread_id"))
        batch_op.drop_index(batch_op.f("ix_metadata_edit_state"))
    op.drop_table("metadata_edit")
