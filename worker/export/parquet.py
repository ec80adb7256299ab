"""Parquet (optional extra ``threadsync[parquet]``, needs pyarrow): the CSV columns, typed.

``created_at`` and ``deleted_at`` are UTC timestamps (seconds), ``attachments`` an int32, ``raw``
the API object as JSON text so nothing is lost. Written in row groups of ``batch`` messages, so
memory stays flat.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from worker.errors import ConfigError
from worker.export.source import Row
from worker.export.text import plain_text
from worker.jsontext import loads_text


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa  # noqa: PLC0415 - an optional dependency, imported on use
        import pyarrow.parquet as pq  # noqa: PLC0415 - ditto
    except ImportError as exc:
        raise ConfigError(
            "--format parquet needs pyarrow (the optional 'parquet' extra); install it with"
            " `pip install pyarrow`"
        ) from exc
    return pa, pq


def _record(row: Row) -> dict[str, Any]:
    message = loads_text(row.raw)
    metadata = message.get("metadata")
    deleted = row.deleted_at
    if deleted is not None and deleted.tzinfo is None:
        deleted = deleted.replace(tzinfo=UTC)
    return {
        "thread_id": row.thread_id,
        "message_id": row.id,
        "created_at": datetime.fromtimestamp(message.get("created_at", row.created_at), UTC),
        "role": message.get("role"),
        "status": message.get("status"),
        "assistant_id": message.get("assistant_id"),
        "run_id": message.get("run_id"),
        "text": plain_text(message),
        "attachments": len(message.get("attachments") or []),
        "metadata": orjson.dumps(metadata or {}, option=orjson.OPT_SORT_KEYS).decode(),
        "deleted_at": deleted,
        "raw": row.raw,
    }


def write_parquet(rows: Iterable[Row], out: IO[bytes], *, batch: int = 20_000) -> int:
    pa, pq = _pyarrow()
    ts = pa.timestamp("s", tz="UTC")
    schema = pa.schema(
        [
            ("thread_id", pa.string()),
            ("message_id", pa.string()),
            ("created_at", ts),
            ("role", pa.string()),
            ("status", pa.string()),
            ("assistant_id", pa.string()),
            ("run_id", pa.string()),
            ("text", pa.string()),
            ("attachments", pa.int32()),
            ("metadata", pa.string()),
            ("deleted_at", ts),
            ("raw", pa.string()),
        ]
    )
    count = 0
    pending: list[dict[str, Any]] = []
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        for row in rows:
            pending.append(_record(row))
            count += 1
            if len(pending) >= batch:
                writer.write_table(pa.Table.from_pylist(pending, schema=schema))
                pending.clear()
        if pending:
            writer.write_table(pa.Table.from_pylist(pending, schema=schema))
    return count
