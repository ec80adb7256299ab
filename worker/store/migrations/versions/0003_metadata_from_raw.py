"""The ``metadata`` column is derived from ``raw`` instead of stored a second time.

A message's metadata (up to 16 keys of 512 characters) was written twice: inside ``raw`` and in
its own column. With the emulator's seed that was a third of the mirror (328 MB for 100,000
messages, 227 MB without), and a third of every first sync's writes. The column stays, with the
same name and the same JSON text, so queries on it keep working; it is now computed from ``raw``:

- SQLite: a VIRTUAL generated column (computed when read, stored nowhere);
- PostgreSQL: a STORED generated column (PostgreSQL before 18 has no virtual ones), so the
  server derives it and threadsync never sends it.

Only an object is the column's value; a message without metadata, or with a non-object one, reads
NULL (it read JSON ``null`` before; both read back as None).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 09:50:00.000000
"""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SQLITE_EXPR = (
    "CASE json_type(raw, '$.metadata') WHEN 'object' THEN json_extract(raw, '$.metadata') END"
)
POSTGRES_EXPR = (
    "CASE WHEN json_typeof(raw::json -> 'metadata') = 'object' THEN raw::json -> 'metadata' END"
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        if sqlite3.sqlite_version_info < (3, 35, 0):
            raise RuntimeError(
                f"this upgrade needs SQLite 3.35 or newer (ALTER TABLE DROP COLUMN); Python's"
                f" sqlite3 here links {sqlite3.sqlite_version}: run threadsync with a newer"
                " Python or SQLite"
            )
        op.execute("ALTER TABLE message DROP COLUMN metadata")
        op.execute(
            f"ALTER TABLE message ADD COLUMN metadata JSON GENERATED ALWAYS AS ({SQLITE_EXPR})"
            " VIRTUAL"
        )
    else:
        op.execute("ALTER TABLE message DROP COLUMN metadata")
        op.execute(
            f"ALTER TABLE message ADD COLUMN metadata JSON GENERATED ALWAYS AS ({POSTGRES_EXPR})"
            " STORED"
        )


def downgrade() -> None:
    op.execute("ALTER TABLE message DROP COLUMN metadata")
    op.add_column("message", sa.Column("metadata", sa.JSON(), nullable=True))
    expr = SQLITE_EXPR if op.get_bind().dialect.name == "sqlite" else POSTGRES_EXPR
    op.execute(f"UPDATE message SET metadata = {expr}")  # noqa: S608 - constant SQL
