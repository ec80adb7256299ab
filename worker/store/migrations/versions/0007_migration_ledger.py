"""The migration ledger (issue 19): ``migrate_thread`` and ``migrate_batch``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "migrate_thread",
        sa.Column("target", sa.String(length=512), nullable=False),
        sa.Column("thread_id", sa.String(length=128), nullable=False),
        sa.Column("migration_id", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", sa.String(length=128), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("last_item_id", sa.String(length=128), nullable=True),
        sa.Column("dropped", sa.Integer(), nullable=False),
        sa.Column("replaced", sa.Integer(), nullable=False),
        sa.Column("lost_creates", sa.Integer(), nullable=False),
        sa.Column("migrated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("target", "thread_id"),
    )
    op.create_table(
        "migrate_batch",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=512), nullable=False),
        sa.Column("thread_id", sa.String(length=128), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("message_ids", sa.Text(), nullable=False),
        sa.Column("item_ids", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_migrate_batch_thread", "migrate_batch", ["target", "thread_id", "seq"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_migrate_batch_thread", table_name="migrate_batch")
    op.drop_table("migrate_batch")
    op.drop_table("migrate_thread")
