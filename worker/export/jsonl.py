"""JSON Lines: one message object per line, exactly as the API returned it.

With ``--include-deleted``, a message the server no longer lists is written with one extra
top-level key appended, ``"_threadsync": {"deleted_at": "<ISO 8601 UTC>"}``; every field of the
API object itself is untouched, and lines of live messages carry no extra key at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any

from worker.export.source import RawBatch, Row, Selection, sqlite_raw_batches

DELETED_KEY = "_threadsync"


def text_of(row: Row) -> str:
    """The line for ``row``, without its newline."""
    if row.deleted_at is None:
        return row.raw
    when = row.deleted_at if row.deleted_at.tzinfo else row.deleted_at.replace(tzinfo=UTC)
    stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    mark = f'"{DELETED_KEY}":{{"deleted_at":"{stamp}"}}'
    body = row.raw.rstrip()
    if not body.endswith("}"):
        # Not an object (nothing the client stores, but the mirror could hold one): kept whole
        # under the mark, since no key can be appended to it.
        return f'{{{mark},"value":{body}}}'
    inner = body[:-1].rstrip()
    return f"{inner}{mark}}}" if inner.endswith("{") else f"{inner},{mark}}}"


def line_of(row: Row) -> bytes:
    return text_of(row).encode() + b"\n"


def write_jsonl(rows: Iterable[Row], out: IO[bytes]) -> int:
    """Write rows; returns how many were written (a thousand lines per write)."""
    count = 0
    buffer: list[bytes] = []
    for row in rows:
        buffer.append(row.raw.encode() if row.deleted_at is None else text_of(row).encode())
        if len(buffer) >= 1000:
            buffer.append(b"")
            out.write(b"\n".join(buffer))
            count += len(buffer) - 1
            buffer.clear()
    if buffer:
        buffer.append(b"")
        out.write(b"\n".join(buffer))
        count += len(buffer) - 1
    return count


def write_sqlite_jsonl(conn: Any, selection: Selection, out: IO[bytes]) -> int:
    """:func:`write_raw_jsonl` from a SQLite DB-API connection (a backup's copy)."""
    return write_raw_jsonl(sqlite_raw_batches(conn, selection), out)


def write_raw_jsonl(batches: Iterable[tuple[str, RawBatch]], out: IO[bytes]) -> int:
    """:func:`write_jsonl` for a SQLite mirror (``worker.store.messages.raw_batches``): the
    stored bytes go out as they are, never decoded and encoded again (half the time of the row
    path)."""
    count = 0
    for _, batch in batches:
        lines = [
            raw if deleted is None else deleted_line(raw, deleted) for _, raw, deleted in batch
        ]
        lines.append(b"")
        out.write(b"\n".join(lines))
        count += len(batch)
    return count


def deleted_line(raw: bytes, deleted_at: str) -> bytes:
    """The line of a deleted message from its stored bytes and SQLite ``deleted_at`` text."""
    row = Row("", "", 0, raw.decode(), datetime.fromisoformat(deleted_at))
    return text_of(row).encode()
