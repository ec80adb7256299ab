"""``metadata`` is derived from ``raw`` instead of stored twice; digests are of ``raw``'s bytes.

A message's metadata (up to 16 keys of 512 characters) was written twice: inside ``raw`` and in
its own column. With the emulator's seed that was a third of the mirror (328 MB for 100,000
messages, 227 MB without), and a third of every first sync's writes. The column stays, with the
same name and the same JSON text, so queries on it keep working; it is now computed from ``raw``:

- SQLite: a VIRTUAL generated column (computed when read, stored nowhere);
- PostgreSQL: a STORED generated column (PostgreSQL before 18 has no virtual ones), so the
  server derives it and threadsync never sends it.

Only an object is the column's value; a message without metadata, or with a non-object one, reads
NULL (it read JSON ``null`` before; both read back as None).

``digest`` (what change detection compares) becomes the SHA-256 of the object's bytes as ``raw``
holds them, the first 128 bits in hex, instead of a BLAKE2b of a key-sorted re-serialisation:
that second serialisation was a third of the sync's CPU per message listed. Every row's digest is
recomputed here (about 100,000 rows a second), from ``raw`` parsed and serialised as the sync does.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 09:50:00.000000
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from hashlib import blake2b, sha256

import orjson
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


BATCH = 2000


def _new_digest(raw: str) -> str:
    """As ``worker.sync.plan.digest_of`` of the bytes the sync makes of this object."""
    try:
        data = orjson.dumps(orjson.loads(raw))
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):  # kept as received; hash it as is
        data = raw.encode()
    return sha256(data).hexdigest()[:32]


def _old_digest(raw: str) -> str:
    """The digest before this revision: BLAKE2b-128 of the key-sorted serialisation."""
    try:
        data = orjson.dumps(orjson.loads(raw), option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        data = raw.encode()
    return blake2b(data, digest_size=16).hexdigest()


def _redigest(digest: Callable[[str], str]) -> None:
    """Recompute every message's digest, a batch of rows at a time (keyset on the id)."""
    conn = op.get_bind()
    read = sa.text("SELECT id, raw FROM message WHERE id > :after ORDER BY id LIMIT :n")
    write = sa.text("UPDATE message SET digest = :digest WHERE id = :id")
    after = ""
    while True:
        rows = conn.execute(read, {"after": after, "n": BATCH}).all()
        if not rows:
            return
        conn.execute(write, [{"id": mid, "digest": digest(raw)} for mid, raw in rows])
        after = rows[-1][0]


def upgrade() -> None:
    _redigest(_new_digest)
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
    _redigest(_old_digest)
    op.execute("ALTER TABLE message DROP COLUMN metadata")
    op.add_column("message", sa.Column("metadata", sa.JSON(), nullable=True))
    expr = SQLITE_EXPR if op.get_bind().dialect.name == "sqlite" else POSTGRES_EXPR
    op.execute(f"UPDATE message SET metadata = {expr}")  # noqa: S608 - constant SQL
