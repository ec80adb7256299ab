"""JSON Lines: one message object per line, exactly as the API returned it.

With ``--include-deleted``, a message the server no longer lists is written with one extra
top-level key appended, ``"_threadsync": {"deleted_at": "<ISO 8601 UTC>"}``; every field of the
API object itself is untouched, and lines of live messages carry no extra key at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC
from typing import IO

from worker.export.source import Row

DELETED_KEY = "_threadsync"


def line_of(row: Row) -> bytes:
    if row.deleted_at is None:
        return row.raw.encode() + b"\n"
    when = row.deleted_at if row.deleted_at.tzinfo else row.deleted_at.replace(tzinfo=UTC)
    stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = row.raw.rstrip()
    assert body.endswith("}")
    return f'{body[:-1]},"{DELETED_KEY}":{{"deleted_at":"{stamp}"}}}}\n'.encode()


def write_jsonl(rows: Iterable[Row], out: IO[bytes]) -> int:
    """Write rows; returns how many were written."""
    count = 0
    buffer: list[bytes] = []
    for row in rows:
        buffer.append(line_of(row))
        count += 1
        if len(buffer) >= 1000:
            out.write(b"".join(buffer))
            buffer.clear()
    if buffer:
        out.write(b"".join(buffer))
    return count
