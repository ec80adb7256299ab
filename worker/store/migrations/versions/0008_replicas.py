"""Several daemons on one PostgreSQL mirror (issue 21): lease epochs, replicas, job slots.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 11:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Not indexed on purpose: lease updates stay HOT on PostgreSQL.
    op.add_column(
        "tracked_thread",
        sa.Column("lease_epoch", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_table(
        "daemon_replica",
        sa.Column("replica_id", sa.String(length=128), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("draining", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("replica_id"),
    )
    op.create_table(
        "job_slot",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_epoch", sa.Integer(), nullable=False),
        sa.Column("slot", sa.DateTime(timezone=True), nullable=True),
        sa.Column("slot_done_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_outcome", sa.String(length=16), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("job_slot")
    op.drop_table("daemon_replica")
    # Natively (SQLite >= 3.35 too): a batch copy of tracked_thread would trip sync_state's FK.
    op.execute("ALTER TABLE tracked_thread DROP COLUMN lease_epoch")
