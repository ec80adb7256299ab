"""CSV: one flat row per message, for spreadsheets and quick analysis.

Columns: thread_id, message_id, created_at (ISO 8601 UTC), role, status, assistant_id, run_id,
text (every part joined by a blank line; citation markers kept as written, images as
``[image file <id>]``), attachments (a count), metadata (JSON), deleted_at (ISO 8601 UTC, empty for
live messages). RFC 4180 quoting, UTF-8, ``\\r\\n`` line ends.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import IO

import orjson

from worker.export.source import Row
from worker.export.text import iso_datetime, iso_utc, plain_text
from worker.jsontext import loads_text

COLUMNS = (
    "thread_id",
    "message_id",
    "created_at",
    "role",
    "status",
    "assistant_id",
    "run_id",
    "text",
    "attachments",
    "metadata",
    "deleted_at",
)


def csv_record(row: Row) -> list[str]:
    """The CSV cells of one message."""
    message = loads_text(row.raw)
    metadata = message.get("metadata")
    return [
        row.thread_id,
        row.id,
        iso_utc(message.get("created_at", row.created_at)),
        message.get("role") or "",
        message.get("status") or "",
        message.get("assistant_id") or "",
        message.get("run_id") or "",
        plain_text(message),
        str(len(message.get("attachments") or [])),
        orjson.dumps(metadata, option=orjson.OPT_SORT_KEYS).decode() if metadata else "{}",
        iso_datetime(row.deleted_at),
    ]


def write_csv(rows: Iterable[Row], out: IO[bytes], *, header: bool = True) -> int:
    """Write a header and one line per row; returns how many messages were written."""
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=False)
    writer = csv.writer(text)
    if header:
        writer.writerow(COLUMNS)
    count = 0
    for row in rows:
        writer.writerow(csv_record(row))
        count += 1
    text.flush()
    text.detach()  # hand the binary stream back open: the caller owns (and renames) it
    return count
