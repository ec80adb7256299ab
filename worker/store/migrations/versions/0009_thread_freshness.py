"""Freshness under a budget (issue 21): each tracked thread's own check interval.

``check_interval`` (seconds), ``last_changed_at`` and ``last_checked_at`` on ``tracked_thread``.
NULL in every row after this upgrade: a thread never checked since is taken as just changed (its
interval starts at ``daemon.min_interval``) and counts in no lag figure until its next pass.
The index on ``last_changed_at`` serves the lag gauges (threads changed in the last hour).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE, not batch mode: on SQLite a batch recreates tracked_thread, which
    # sync_state's foreign key forbids dropping (SQLite >= 3.35 drops a column in place).
    op.add_column("tracked_thread", sa.Column("check_interval", sa.Float(), nullable=True))
    op.add_column(
        "tracked_thread", sa.Column("last_changed_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "tracked_thread", sa.Column("last_checked_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index(
        "ix_tracked_thread_last_changed_at", "tracked_thread", ["last_changed_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_tracked_thread_last_changed_at", table_name="tracked_thread")
    op.drop_column("tracked_thread", "last_checked_at")
    op.drop_column("tracked_thread", "last_changed_at")
    op.drop_column("tracked_thread", "check_interval")
