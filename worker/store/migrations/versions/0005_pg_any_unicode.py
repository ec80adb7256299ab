"""PostgreSQL: a message holding U+0000 (or an escaped lone surrogate) can be stored.

``raw`` is text holding the JSON serialisation, where U+0000 is the six ASCII characters
``\\u0000`` and a lone surrogate its ``\\uXXXX`` escape: PostgreSQL's text holds them as they are.
What refused such a message was the generated ``metadata`` column (0003): PostgreSQL parses
``raw::json`` to take ``metadata`` out, and refuses ``\\u0000`` ("cannot be converted to text")
and a lone surrogate anywhere in the object, so the whole INSERT failed. Now the column is
computed by a function (``threadsync_message_metadata``, in the mirror's schema) that first
rewrites those escapes to ``\\ufffd`` (only escapes: ``\\\\u0000``, a backslash then ``u0000``, is
left alone) and takes ``metadata`` from that; the column keeps every other character exactly and
``raw`` keeps everything. Text without a ``\\u`` skips the rewrite.

``role``, ``status``, ``run_id`` and ``assistant_id`` become unbounded text: a server's longer
value failed the write (SQLite never enforced the lengths). From varchar to text PostgreSQL
rewrites nothing. SQLite needs none of this: its JSON functions keep escapes as they are.

Downgrade refuses (naming why) when a message holds what revision 0004 cannot store.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 09:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# An escape of U+0000 or of a surrogate, preceded by an even number of backslashes (so it is an
# escape, not an escaped backslash followed by text). PostgreSQL's ARE syntax, as a SQL literal.
_ESCAPE = r"(?<!\\)((?:\\\\)*)\\u(0000|[dD][89a-fA-F][0-9a-fA-F]{2})"
FUNCTION = "threadsync_message_metadata"
# A function, not an expression: it parses ``raw`` once where the expression of 0003 parsed it
# twice (the type test, then the value). Inserting 20,000 emulator messages measured 3.0 s with
# 0003's expression and 2.3 s with this (1.2 s with no metadata column at all).
_CREATE_FUNCTION = rf"""
CREATE FUNCTION {FUNCTION}(raw text) RETURNS json
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    doc json;
BEGIN
    IF strpos(raw, '\u') > 0 THEN
        raw := regexp_replace(raw, '{_ESCAPE}', '\1\\ufffd', 'g');
    END IF;
    doc := raw::json -> 'metadata';
    IF json_typeof(doc) = 'object' THEN
        RETURN doc;
    END IF;
    RETURN NULL;
END
$$
"""
POSTGRES_EXPR = f"{FUNCTION}(raw)"
OLD_POSTGRES_EXPR = (
    "CASE WHEN json_typeof(raw::json -> 'metadata') = 'object' THEN raw::json -> 'metadata' END"
)
_COLUMNS = {"role": 32, "status": 32, "run_id": 128, "assistant_id": 128}


def _metadata(expr: str) -> None:
    op.execute("ALTER TABLE message DROP COLUMN metadata")
    op.execute(f"ALTER TABLE message ADD COLUMN metadata JSON GENERATED ALWAYS AS ({expr}) STORED")


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        return
    conn.exec_driver_sql(_CREATE_FUNCTION)  # not through text(): ``:=`` is no bound parameter
    _metadata(POSTGRES_EXPR)
    types = ", ".join(f"ALTER COLUMN {name} TYPE TEXT" for name in _COLUMNS)
    op.execute(f"ALTER TABLE message {types}")


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        return
    too_long = " OR ".join(f"length({name}) > {n}" for name, n in _COLUMNS.items())
    found = conn.exec_driver_sql(
        f"SELECT count(*) FROM message WHERE raw ~ '{_ESCAPE}' OR {too_long}"  # noqa: S608 - constants
    ).scalar_one()
    if found:
        raise RuntimeError(
            f"{found} mirrored messages hold U+0000, a lone surrogate or a field longer than"
            " revision 0004 stores; it cannot hold them, so the mirror stays at this revision"
        )
    types = ", ".join(f"ALTER COLUMN {name} TYPE VARCHAR({n})" for name, n in _COLUMNS.items())
    op.execute(f"ALTER TABLE message {types}")
    _metadata(OLD_POSTGRES_EXPR)
    op.execute(f"DROP FUNCTION {FUNCTION}(text)")
