"""``sync_state.walk_memo``: what the last full walk that wrote nothing saw.

With it the next reconcile of an unchanged thread hashes each page instead of parsing it (see
``worker/sync/memo.py``). It is a cache: NULL (every row after this upgrade) only means that the
next full walk of the thread parses its pages, as before, and records one.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 13:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sync_state", sa.Column("walk_memo", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sync_state", schema=None) as batch_op:
        batch_op.drop_column("walk_memo")
