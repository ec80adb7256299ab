"""``sync_run.outcome``: how a run ended (ok, failed, interrupted).

Before it, a run stopped by SIGINT or SIGTERM kept ``finished_at`` NULL forever and could not be
told apart from one still going. Rows from before this upgrade keep NULL: ``threadsync runs``
derives their outcome from ``finished_at`` and the thread counts.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sync_run", sa.Column("outcome", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sync_run", schema=None) as batch_op:
        batch_op.drop_column("outcome")
