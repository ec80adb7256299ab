"""Streaming the mirror in export order: threads in turn, each in server order (oldest first)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import Select, func, select
from sqlmodel import col

from worker.store.db import Mirror
from worker.store.models import Message, TrackedThread


class Row(NamedTuple):
    """One stored message as the exporters see it (a tuple: a million are made per export)."""

    thread_id: str
    id: str
    created_at: int
    raw: str
    deleted_at: datetime | None


@dataclass(frozen=True)
class Selection:
    """What to export."""

    thread_ids: Sequence[str] | None = None
    include_deleted: bool = False
    since: int | None = None  # created_at >= since (unix seconds)
    until: int | None = None  # created_at < until
    roles: Sequence[str] | None = None


def thread_order(mirror: Mirror, selection: Selection) -> list[str]:
    """Tracked threads in the order they were added, then any other thread that has messages."""
    with mirror.read() as session:
        tracked = [
            r[0]
            for r in session.execute(
                select(col(TrackedThread.thread_id)).order_by(
                    col(TrackedThread.added_at), col(TrackedThread.thread_id)
                )
            )
        ]
        others = [
            r[0]
            for r in session.execute(
                select(col(Message.thread_id)).distinct().order_by(col(Message.thread_id))
            )
        ]
    ordered = tracked + [t for t in others if t not in set(tracked)]
    if selection.thread_ids is not None:
        return list(dict.fromkeys(selection.thread_ids))
    return ordered


_Q = TypeVar("_Q", bound=Select[*tuple[Any, ...]])


def _filtered(query: _Q, selection: Selection) -> _Q:
    if not selection.include_deleted:
        query = query.where(col(Message.deleted_at).is_(None))
    if selection.since is not None:
        query = query.where(col(Message.created_at) >= selection.since)
    if selection.until is not None:
        query = query.where(col(Message.created_at) < selection.until)
    if selection.roles:
        query = query.where(col(Message.role).in_(list(selection.roles)))
    return query


def count_rows(mirror: Mirror, selection: Selection) -> int:
    """How many rows :func:`iter_rows` will yield (for a progress bar's total)."""
    query = _filtered(select(func.count()).select_from(Message), selection)
    if selection.thread_ids is not None:
        query = query.where(col(Message.thread_id).in_(list(selection.thread_ids)))
    with mirror.read() as session:
        return int(session.execute(query).scalar_one())


# The distinct thread ids of the message table by a skip scan of its (thread_id, ...) index: one
# seek per thread instead of reading a million index entries (a second of a 1M-message export).
_THREADS_WITH_MESSAGES = """
WITH RECURSIVE t(id) AS (
    SELECT (SELECT MIN(thread_id) FROM message)
    UNION ALL
    SELECT (SELECT MIN(thread_id) FROM message WHERE thread_id > t.id) FROM t WHERE t.id IS NOT NULL
)
SELECT id FROM t WHERE id IS NOT NULL
"""


def _sqlite_plan(conn: Any, selection: Selection, columns: str) -> tuple[list[str], str, list[Any]]:
    """The threads in export order, and the per-thread query with its extra parameters."""
    if selection.thread_ids is not None:
        threads = list(dict.fromkeys(selection.thread_ids))
    else:
        threads = [
            r[0]
            for r in conn.execute(
                "SELECT thread_id FROM tracked_thread ORDER BY added_at, thread_id"
            )
        ]
        tracked = set(threads)
        threads += [r[0] for r in conn.execute(_THREADS_WITH_MESSAGES) if r[0] not in tracked]
    sql = f"SELECT {columns} FROM message WHERE thread_id = ?"  # noqa: S608 - constant columns
    params: list[Any] = []
    if not selection.include_deleted:
        sql += " AND deleted_at IS NULL"
    if selection.since is not None:
        sql += " AND created_at >= ?"
        params.append(selection.since)
    if selection.until is not None:
        sql += " AND created_at < ?"
        params.append(selection.until)
    if selection.roles:
        sql += f" AND role IN ({', '.join('?' * len(selection.roles))})"
        params.extend(selection.roles)
    sql += " ORDER BY created_at, tie_rank, id"
    return threads, sql, params


def sqlite_rows(conn: Any, selection: Selection) -> Iterator[Row]:
    """The selected rows of a SQLite mirror, in export order, from a DB-API connection.

    Straight from the driver's cursor: SQLAlchemy's per-row result processing cost as much as the
    rest of a JSONL export together. Everything is read in the connection's current transaction,
    so with one open the export is one snapshot (a backup relies on that).
    """
    threads, sql, params = _sqlite_plan(
        conn, selection, "thread_id, id, created_at, raw, deleted_at"
    )
    parse, make = datetime.fromisoformat, partial(tuple.__new__, Row)  # Row._make, in C
    for thread_id in threads:
        cursor = conn.execute(sql, [thread_id, *params])
        cursor.arraysize = 2000
        while chunk := cursor.fetchmany():
            for item in chunk:
                if item[4] is None:
                    yield make(item)
                else:
                    t, i, c, raw, deleted = item
                    yield Row(t, i, c, raw, parse(deleted))


RawBatch = list[tuple[str, bytes, str | None]]


def sqlite_raw_batches(conn: Any, selection: Selection) -> Iterator[tuple[str, RawBatch]]:
    """``(thread_id, [(message id, stored text as bytes, deleted_at), ...])`` in export order,
    the text never decoded: what JSONL writers need and nothing more. A batch holds one thread."""
    threads, sql, params = _sqlite_plan(conn, selection, "id, CAST(raw AS BLOB), deleted_at")
    for thread_id in threads:
        cursor = conn.execute(sql, [thread_id, *params])
        cursor.arraysize = 2000
        while chunk := cursor.fetchmany():
            yield thread_id, chunk


def iter_rows(mirror: Mirror, selection: Selection, *, batch: int = 2000) -> Iterator[Row]:
    """Yield rows thread by thread; memory stays flat (the database cursor streams)."""
    if mirror.is_sqlite:
        with mirror.read() as session:
            yield from sqlite_rows(session.connection().connection.driver_connection, selection)
        return
    for thread_id in thread_order(mirror, selection):
        query = select(
            col(Message.thread_id),
            col(Message.id),
            col(Message.created_at),
            col(Message.raw),
            col(Message.deleted_at),
        ).where(col(Message.thread_id) == thread_id)
        query = _filtered(query, selection)
        query = query.order_by(col(Message.created_at), col(Message.tie_rank), col(Message.id))
        with mirror.read() as session:
            result = session.execute(query, execution_options={"yield_per": batch})
            for r in result:
                yield Row(r[0], r[1], r[2], r[3], r[4])
