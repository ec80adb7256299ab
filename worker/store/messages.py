"""Every statement on the ``message`` table, named at the top, inside the caller's transaction.

The sync's hot path lives here with the rest: a page's read of what is stored, its inserts and
updates, a full walk's census and sweep, tombstones. On SQLite they go straight to the DB-API
connection in the same transaction: SQLAlchemy's per-row parameter processing cost three times the
insert itself. They are also shaped so that a page crosses the driver in one step (a multi-row
INSERT, reads aggregated into one JSON row): Python's sqlite3 releases and retakes the GIL at every
row it steps through, and in a worker thread each retake waits behind the event loop. PostgreSQL
goes through SQLAlchemy Core, which batches well with psycopg. Where the two backends need no
different statement, there is one (SQLAlchemy Core).

Nothing outside ``worker/store`` touches the DB-API driver: callers get rows, counts and values.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, partial
from hashlib import sha256
from typing import Any, NamedTuple, TypeVar, cast

import orjson
from sqlalchemy import ColumnElement, Integer, Select, String, any_, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import Session, col

from worker.store.models import Message

_TABLE = Message.__table__  # type: ignore[attr-defined]
COLUMNS = (
    "id",
    "thread_id",
    "created_at",
    "tie_rank",
    "role",
    "status",
    "run_id",
    "assistant_id",
    "raw",
    "digest",
    "first_seen_at",
    "updated_at",
    "deleted_at",
)

# -- the statements (SQLite text; PostgreSQL's are the SQLAlchemy Core forms beside them) ----------

# ``raw`` is bound as the UTF-8 bytes orjson made, and SQLite stores them as TEXT as they are:
# binding a str instead cost a decode on the event loop and an encode in the single writer for
# every message (0.2 s each for a 100,000-message first sync), and the str kept both copies.
_RAW = "CAST(? AS TEXT)"
_ROW_MARKS = "(" + ", ".join(_RAW if c == "raw" else "?" for c in COLUMNS) + ")"
_STORED_COLUMNS = "id, created_at, tie_rank, digest, deleted_at IS NOT NULL"
UPDATE_SQL = (
    "UPDATE message SET created_at=?, tie_rank=?, role=?, status=?, run_id=?, assistant_id=?,"
    " raw=CAST(? AS TEXT), digest=?, updated_at=?, deleted_at=NULL WHERE id=?"
)
# The census read, in a fixed order (its bytes are the walk memo's key, see worker/sync/memo.py);
# ``gone`` names the last column for the JSON form below. The index serves the order up to ties.
CENSUS_SQL = (
    f"SELECT {_STORED_COLUMNS} AS gone FROM message WHERE thread_id = ?"  # noqa: S608 - constants
    " ORDER BY created_at, tie_rank, id LIMIT ?"
)
CENSUS_JSON_SQL = (
    "SELECT count(*), json_group_array(json_array(id, created_at, tie_rank, digest, gone))"  # noqa: S608 - constants
    f" FROM ({CENSUS_SQL})"
)
# What comparing needs of a stored message, through SQLAlchemy (PostgreSQL).
STORED_SELECT = select(
    col(Message.id),
    col(Message.created_at),
    col(Message.tie_rank),
    col(Message.digest),
    col(Message.deleted_at),
)
# Built once, the id bound at each run: a walk asks where a message sits once or twice per
# changed thread, and building the statement (its cache key) cost more than running it.
PLACE_SELECT = select(col(Message.created_at), col(Message.tie_rank)).where(
    col(Message.id) == bindparam("message_id"), col(Message.deleted_at).is_(None)
)
IN_PROGRESS_SELECT = select(col(Message.thread_id), col(Message.id)).where(
    col(Message.status) == "in_progress", col(Message.deleted_at).is_(None)
)


class Incoming(NamedTuple):
    """A message as listed by the server, ready to compare and store.

    A tuple, not a dataclass: a sync makes one per message listed, and a frozen dataclass's
    constructor costs several times a tuple's.
    """

    id: str
    created_at: int
    raw: bytes  # the object as orjson serialises it: UTF-8, key order as received
    digest: str
    # The queryable columns, taken out at once so the parsed object can be freed (a page of
    # dicts is several times the size of its text, and eight threads keep two pages each).
    # ``metadata`` is not among them: the database derives that column from ``raw``.
    role: str | None
    status: str | None
    run_id: str | None
    assistant_id: str | None


class Stored(NamedTuple):
    """What the mirror holds of a message, as far as comparing needs."""

    id: str
    created_at: int
    rank: int
    digest: str
    deleted: bool


class Placed(NamedTuple):
    """Where a stored, live message sits in its thread."""

    created_at: int
    rank: int


Ranked = Sequence[tuple[Incoming, int]]  # messages with the tie rank they are stored with


def is_sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def among(session: Session, column: Any, ids: Sequence[str]) -> ColumnElement[bool]:
    """``column IN (ids)``; on PostgreSQL ``column = ANY(:ids)``, the ids in one array.

    For the daemon's per-batch reads of a hundred or more threads: an IN list binds one
    parameter per id, so its text changes with the batch's size and is too long for psycopg's
    statement cache (over 50 parameters), and SQLAlchemy renders every parameter again at each
    run. One array parameter keeps one statement text (cached, and prepared by psycopg after a
    few runs): 1.24 -> 0.67 ms of CPU per read of 118 ids (microbenchmark, PostgreSQL 15). The
    server plans both alike (it turns an IN list into ``= ANY``): an index scan.
    """
    if session.get_bind().dialect.name == "postgresql":
        return cast(ColumnElement[bool], column == any_(bindparam(None, list(ids), ARRAY(String))))
    return cast(ColumnElement[bool], column.in_(list(ids)))


def driver_of(session: Session) -> Any:
    """The DB-API connection of the session's current transaction (``worker/store`` only)."""
    return session.connection().connection.driver_connection


def _sqlite_has_json() -> bool:
    """Whether the linked SQLite has its JSON functions (built in since 3.38, optional before)."""
    try:
        with closing(sqlite3.connect(":memory:")) as conn:
            conn.execute("SELECT json_group_array(json_array(1, 'a'))").fetchone()
    except sqlite3.Error:
        return False
    return True


SQLITE_JSON = _sqlite_has_json()


def _sqlite_rows(session: Session, columns: str, where: str, params: Sequence[Any]) -> list[Any]:
    """``SELECT columns FROM message WHERE where`` on SQLite, as a list of row sequences.

    Read in one step where SQLite can: Python's sqlite3 releases and retakes the GIL around every
    row it steps through, and in a worker thread each retake waits behind an event loop busy
    parsing pages. A full walk's page read (about 200 rows) spent ~15 ms in its thread for under
    half a millisecond of SQLite work, and with two readers that capped a reconcile at ~130
    pages/s (bench_reconcile: 7.2 s, then 5.6 s). Aggregated by SQLite into one JSON array, the
    rows cross in a single step and orjson decodes them.
    """
    driver = driver_of(session)
    if SQLITE_JSON:
        sql = f"SELECT json_group_array(json_array({columns})) FROM message WHERE {where}"  # noqa: S608 - constants of this module
        return cast(list[Any], orjson.loads(driver.execute(sql, params).fetchone()[0]))
    sql = f"SELECT {columns} FROM message WHERE {where}"  # noqa: S608 - ditto
    return cast(list[Any], driver.execute(sql, params).fetchall())


def sqlite_time(when: datetime) -> str:
    """The text form SQLAlchemy's SQLite DateTime type reads back (UTC, no offset)."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


# -- reads of a page, a census, a sweep ------------------------------------------------------------


def load_stored(session: Session, ids: Sequence[str]) -> dict[str, Stored]:
    """What is stored of ``ids`` (live or tombstoned), by id."""
    if not ids:
        return {}
    if is_sqlite(session):
        marks = ", ".join("?" * len(ids))
        rows = _sqlite_rows(session, _STORED_COLUMNS, f"id IN ({marks})", ids)
        return {r[0]: Stored(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows}
    # A page's hundred ids in one array (see among): the read runs once per page written.
    result = session.execute(STORED_SELECT.where(among(session, col(Message.id), ids)))
    return {r[0]: Stored(r[0], r[1], r[2], r[3], r[4] is not None) for r in result}


def stored_raw(session: Session, ids: Sequence[str]) -> dict[str, str]:
    """The stored object text of ``ids``, by id."""
    if not ids:
        return {}
    if is_sqlite(session):
        marks = ", ".join("?" * len(ids))
        return {r[0]: r[1] for r in _sqlite_rows(session, "id, raw", f"id IN ({marks})", ids)}
    query = select(col(Message.id), col(Message.raw)).where(col(Message.id).in_(ids))
    return {r[0]: r[1] for r in session.execute(query)}


def unlisted(
    session: Session, thread_id: str, *, low: int | None, high: int | None, seen: set[str]
) -> list[str]:
    """Live messages with ``low <= created_at < high`` that a full walk did not list."""
    if is_sqlite(session):  # once per page of a full walk: straight to the driver, as above
        where = "thread_id = ? AND deleted_at IS NULL"
        params: list[Any] = [thread_id]
        if low is not None:
            where += " AND created_at >= ?"
            params.append(low)
        if high is not None:
            where += " AND created_at < ?"
            params.append(high)
        rows = _sqlite_rows(session, "id", where, params)
        return [row[0] for row in rows if row[0] not in seen]
    query = select(col(Message.id)).where(
        col(Message.thread_id) == thread_id, col(Message.deleted_at).is_(None)
    )
    if low is not None:
        query = query.where(col(Message.created_at) >= low)
    if high is not None:
        query = query.where(col(Message.created_at) < high)
    return [row[0] for row in session.execute(query) if row[0] not in seen]


CensusRows = tuple[bytes, Callable[[], list[Stored]]]  # its signature, and its rows on demand


def census_rows(session: Session, thread_id: str, limit: int) -> CensusRows | None:
    """The thread's stored messages in census order (created_at, tie_rank, id) with the SHA-256
    of the bytes read, or None when it holds more than ``limit``. The rows decode on demand: a
    walk its memo replays never needs them."""
    if is_sqlite(session):
        driver = driver_of(session)
        if SQLITE_JSON:  # one step, see _sqlite_rows
            count, text = driver.execute(CENSUS_JSON_SQL, [thread_id, limit + 1]).fetchone()
            if count > limit:
                return None
            data = text.encode()
            return sha256(data).digest(), lambda: [
                Stored(r[0], r[1], r[2], r[3], bool(r[4])) for r in orjson.loads(data)
            ]
        found = driver.execute(CENSUS_SQL, [thread_id, limit + 1]).fetchall()
        stored = [Stored(r[0], r[1], r[2], r[3], bool(r[4])) for r in found]
    else:
        result = session.execute(
            STORED_SELECT.where(col(Message.thread_id) == thread_id)
            .order_by(col(Message.created_at), col(Message.tie_rank), col(Message.id))
            .limit(limit + 1)
        )
        stored = [Stored(r[0], r[1], r[2], r[3], r[4] is not None) for r in result]
    if len(stored) > limit:
        return None
    return sha256(orjson.dumps([list(r) for r in stored])).digest(), lambda: stored


def census_sig(rows: Sequence[tuple[str, int, int, str, bool]], *, sqlite: bool) -> bytes:
    """The signature :func:`census_rows` would read if the mirror held exactly ``rows`` of the
    thread (``Stored`` fields, in census order), computed without reading anything.

    If the mirror holds anything else, its census has another signature: a memo keyed by this
    one is then never replayed.
    """
    if sqlite and SQLITE_JSON:  # the bytes of SQLite's json_group_array, as census_rows hashes
        return sha256(orjson.dumps([(*r[:4], 1 if r[4] else 0) for r in rows])).digest()
    return sha256(orjson.dumps([tuple(r) for r in rows])).digest()


def get(session: Session, message_id: str) -> Message | None:
    """The stored row of a message (live or tombstoned), as the ORM object."""
    return session.get(Message, message_id)


def place(session: Session, message_id: str) -> Placed | None:
    """Where a stored, live message sits; None if unknown or tombstoned."""
    # Through the connection: the ORM's execute path adds nothing to a Core select of columns.
    row = session.connection().execute(PLACE_SELECT, {"message_id": message_id}).first()
    return None if row is None else Placed(row[0], row[1])


def has_live(session: Session, thread_id: str) -> bool:
    """Whether the mirror holds a live message of the thread."""
    query = (
        select(col(Message.id))
        .where(col(Message.thread_id) == thread_id, col(Message.deleted_at).is_(None))
        .limit(1)
    )
    return session.execute(query).first() is not None


def in_progress(session: Session, thread_ids: Sequence[str]) -> dict[str, set[str]]:
    """The live messages stored as still being written, per thread of ``thread_ids``."""
    busy: dict[str, set[str]] = {}
    query = IN_PROGRESS_SELECT.where(among(session, col(Message.thread_id), thread_ids))
    for thread_id, message_id in session.execute(query):
        busy.setdefault(thread_id, set()).add(message_id)
    return busy


def first_seen_since(session: Session, since: datetime) -> int:
    """Messages first stored at or after ``since``."""
    query = select(func.count()).where(col(Message.first_seen_at) >= since)
    return int(session.scalar(query) or 0)


def threads_holding(session: Session, thread_ids: Sequence[str]) -> set[str]:
    """Which of ``thread_ids`` the mirror holds messages of."""
    query = select(col(Message.thread_id)).where(col(Message.thread_id).in_(thread_ids)).distinct()
    return set(session.scalars(query))


# -- reads of a migration (worker/migrate/ledger.py) and of `threadsync status` ------------------

_LIVE = col(Message.deleted_at).is_(None)
NEWEST_LIVE_SELECT = (
    select(col(Message.thread_id), func.max(col(Message.created_at)))
    .where(_LIVE)
    .group_by(col(Message.thread_id))
)
LIVE_COUNTS_SELECT = (
    select(col(Message.thread_id), func.count()).where(_LIVE).group_by(col(Message.thread_id))
)
LIVE_IN_ORDER_SELECT = select(col(Message.id), col(Message.created_at)).order_by(
    col(Message.created_at), col(Message.tie_rank), col(Message.id)
)
STATUS_COUNTS_SELECT = select(
    col(Message.thread_id),
    func.sum(func.cast(_LIVE, type_=Integer)),
    func.count(),
    func.sum(func.cast((col(Message.status) == "in_progress") & _LIVE, type_=Integer)),
).group_by(col(Message.thread_id))


def newest_live(session: Session) -> dict[str, int]:
    """Per thread holding live messages, the newest one's ``created_at``."""
    return {r[0]: r[1] for r in session.execute(NEWEST_LIVE_SELECT)}


def live_counts(session: Session) -> dict[str, int]:
    """Live messages per thread holding any."""
    return {r[0]: int(r[1]) for r in session.execute(LIVE_COUNTS_SELECT)}


def live_in_order(session: Session, thread_id: str) -> list[tuple[str, int]]:
    """``(id, created_at)`` of the thread's live messages in server order (oldest first)."""
    query = LIVE_IN_ORDER_SELECT.where(col(Message.thread_id) == thread_id, _LIVE)
    return [(r[0], r[1]) for r in session.execute(query)]


def raws_by_id(session: Session, ids: Sequence[str]) -> dict[str, str]:
    """The stored object text of ``ids`` (live or tombstoned), by id, in one statement on either
    backend (a migration batch; the page path's :func:`stored_raw` goes straight to SQLite)."""
    query = select(col(Message.id), col(Message.raw)).where(col(Message.id).in_(list(ids)))
    return {r[0]: r[1] for r in session.execute(query)}


class StatusCounts(NamedTuple):
    live: int
    deleted: int
    in_progress: int  # live ones still being written


def status_counts(session: Session) -> dict[str, StatusCounts]:
    """Per thread holding messages: live, tombstoned and in-progress counts (one scan)."""
    return {
        r[0]: StatusCounts(int(r[1] or 0), int(r[2] - (r[1] or 0)), int(r[3] or 0))
        for r in session.execute(STATUS_COUNTS_SELECT)
    }


# -- reads of a SQLite snapshot file (worker/backup/verify.py), through its DB-API connection ------

FILE_COUNTS_SQL = (
    "SELECT thread_id, SUM(deleted_at IS NULL), SUM(deleted_at IS NOT NULL)"
    " FROM message GROUP BY thread_id"
)
FILE_NEWEST_LIVE_SQL = (
    "SELECT id FROM message WHERE thread_id = ? AND deleted_at IS NULL"
    " ORDER BY created_at DESC, tie_rank DESC, id DESC LIMIT 1"
)


def file_counts(conn: Any) -> Iterator[tuple[str, int, int]]:
    """``(thread_id, live, deleted)`` per thread of a SQLite file opened by ``sqlite_files``."""
    for thread_id, live, deleted in conn.execute(FILE_COUNTS_SQL):
        yield thread_id, int(live), int(deleted)


def file_newest_live(conn: Any, thread_id: str) -> str | None:
    """The id of the thread's newest live message in a SQLite file, if it has one."""
    row = conn.execute(FILE_NEWEST_LIVE_SQL, (thread_id,)).fetchone()
    return None if row is None else str(row[0])


# -- writes ------------------------------------------------------------------------------------


def _fields(m: Incoming) -> tuple[str | None, str | None, str | None, str | None]:
    return m.role, m.status, m.run_id, m.assistant_id


def _stored(m: Incoming, rank: int) -> tuple[Any, ...]:
    """created_at .. digest, the columns an insert and an update of ``m`` share (SQLite order)."""
    return (m.created_at, rank, m.role, m.status, m.run_id, m.assistant_id, m.raw, m.digest)


@cache
def _insert_sql(rows: int) -> str:
    return f"INSERT INTO message ({', '.join(COLUMNS)}) VALUES " + ", ".join([_ROW_MARKS] * rows)  # noqa: S608 - see above


def _rows_per_insert(driver: Any) -> int:
    limit: int = driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return max(1, limit // len(COLUMNS))


def _insert_values(thread_id: str, inserts: Ranked, now: datetime) -> list[tuple[Any, ...]]:
    stamp = sqlite_time(now)
    return [(m.id, thread_id, *_stored(m, rank), stamp, stamp, None) for m, rank in inserts]


def _insert_rows(driver: Any, rows: list[tuple[Any, ...]]) -> None:
    """Insert ``rows`` with one multi-row INSERT (per as many rows as SQLite binds at once).

    Not ``executemany``: it steps once per row, and Python's sqlite3 hands the GIL over at every
    step, so each row waited behind the event loop parsing the next pages. A page written as one
    statement steps once: a first sync of 100,000 messages (bench_sync) spent 8.8 s in its write
    transactions, then 6.2 s, and took 9.9 s, then 7.3 s.
    """
    per = _rows_per_insert(driver)
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        driver.execute(_insert_sql(len(chunk)), [value for row in chunk for value in row])


class NewRows(NamedTuple):
    """Rows bound ahead for one INSERT of messages none of which should be stored (SQLite)."""

    rows: int
    params: list[Any]


def bind_new(thread_id: str, inserts: Ranked, now: datetime) -> NewRows:
    """The parameters of :func:`insert_new` (pure): done before the page reaches the single
    writer, whose time is what a first sync waits on."""
    rows = _insert_values(thread_id, inserts, now)
    return NewRows(len(rows), [value for row in rows for value in row])


def insert_new(session: Session, new: NewRows) -> bool:
    """Store rows that should be wholly new with one INSERT and no read first (SQLite).

    A first sync and a forward walk list messages the mirror has not seen, and reading their ids
    before writing cost a SELECT per page in the single writer (about 1 s of a 100,000-message
    first sync, half of it waiting for the GIL to come back). The INSERT has no ON CONFLICT: if
    any message is already stored, the statement fails whole (SQLite undoes the failed
    statement, not the transaction) and this returns False, having written nothing; the caller
    then applies the page the ordinary way. PostgreSQL always goes the ordinary way (a failed
    statement there aborts the transaction).
    """
    if not is_sqlite(session):
        return False
    driver = driver_of(session)
    if new.rows > _rows_per_insert(driver):  # two statements could not fail as one
        return False
    try:
        driver.execute(_insert_sql(new.rows), new.params)
    except sqlite3.IntegrityError:
        return False
    return True


def write(
    session: Session, thread_id: str, inserts: Ranked, updates: Ranked, now: datetime
) -> None:
    """Insert ``inserts`` and update ``updates`` (every column from the listed object, the rank
    given, ``deleted_at`` cleared) in the session's transaction."""
    if is_sqlite(session):
        stamp = sqlite_time(now)
        driver = driver_of(session)
        if inserts:
            _insert_rows(driver, _insert_values(thread_id, inserts, now))
        if updates:
            driver.executemany(
                UPDATE_SQL, [(*_stored(m, rank), stamp, m.id) for m, rank in updates]
            )
        return
    if inserts:
        session.execute(
            _TABLE.insert(),
            [
                dict(zip(COLUMNS, (m.id, thread_id, m.created_at, rank, *_fields(m),
                                   m.raw.decode(), m.digest, now, now, None), strict=True))
                for m, rank in inserts
            ],
        )  # fmt: skip
    if updates:
        names = ("created_at", "tie_rank", "role", "status", "run_id", "assistant_id")
        rows: list[dict[str, Any]] = [
            {"_id": m.id, "raw": m.raw.decode(), "digest": m.digest, "updated_at": now,
             **dict(zip(names, (m.created_at, rank, *_fields(m)), strict=True))}
            for m, rank in updates
        ]  # fmt: skip
        values: dict[str, Any] = {k: bindparam(k) for k in rows[0] if k != "_id"}
        session.execute(
            update(_TABLE).where(_TABLE.c.id == bindparam("_id")).values(deleted_at=None, **values),
            rows,
            execution_options={"synchronize_session": False},
        )


def tombstone(session: Session, ids: Sequence[str], now: datetime) -> int:
    """Mark messages deleted (the rows stay); returns how many were live."""
    if not ids:
        return 0
    result = session.execute(
        update(_TABLE)
        .where(_TABLE.c.id.in_(list(ids)), _TABLE.c.deleted_at.is_(None))
        .values(deleted_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def mark_deleted(session: Session, message_id: str, when: datetime) -> None:
    """Set a message's ``deleted_at`` to ``when`` (an imported tombstone keeps its time)."""
    session.execute(
        update(_TABLE)
        .where(_TABLE.c.id == message_id)
        .values(deleted_at=when)
        .execution_options(synchronize_session=False)
    )


# -- reads in export order: threads in turn, each in server order (oldest first) ----------------


class Row(NamedTuple):
    """One stored message as the exporters see it (a tuple: a million are made per export)."""

    thread_id: str
    id: str
    created_at: int
    raw: str
    deleted_at: datetime | None


@dataclass(frozen=True)
class Selection:
    """Which messages to export."""

    thread_ids: Sequence[str] | None = None
    include_deleted: bool = False
    since: int | None = None  # created_at >= since (unix seconds)
    until: int | None = None  # created_at < until
    roles: Sequence[str] | None = None


# The distinct thread ids of the message table by a skip scan of its (thread_id, ...) index: one
# seek per thread instead of reading a million index entries (a second of a 1M-message export).
THREADS_WITH_MESSAGES_SQL = """
WITH RECURSIVE t(id) AS (
    SELECT (SELECT MIN(thread_id) FROM message)
    UNION ALL
    SELECT (SELECT MIN(thread_id) FROM message WHERE thread_id > t.id) FROM t WHERE t.id IS NOT NULL
)
SELECT id FROM t WHERE id IS NOT NULL
"""
TRACKED_IN_ORDER_SQL = "SELECT thread_id FROM tracked_thread ORDER BY added_at, thread_id"
EXPORT_SELECT = select(
    col(Message.thread_id),
    col(Message.id),
    col(Message.created_at),
    col(Message.raw),
    col(Message.deleted_at),
)

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


def thread_ids_with_messages(session: Session) -> list[str]:
    """Every thread id the message table holds, in id order."""
    query = select(col(Message.thread_id)).distinct().order_by(col(Message.thread_id))
    return [r[0] for r in session.execute(query)]


def count_selected(session: Session, selection: Selection) -> int:
    """How many rows the selection holds."""
    query = _filtered(select(func.count()).select_from(Message), selection)
    if selection.thread_ids is not None:
        query = query.where(col(Message.thread_id).in_(list(selection.thread_ids)))
    return int(session.execute(query).scalar_one())


def selected_of_thread(
    session: Session, thread_id: str, selection: Selection, *, batch: int
) -> Iterator[Row]:
    """The thread's selected rows in server order, streamed ``batch`` at a time."""
    query = _filtered(EXPORT_SELECT.where(col(Message.thread_id) == thread_id), selection)
    query = query.order_by(col(Message.created_at), col(Message.tie_rank), col(Message.id))
    for r in session.execute(query, execution_options={"yield_per": batch}):
        yield Row(r[0], r[1], r[2], r[3], r[4])


def _sqlite_plan(conn: Any, selection: Selection, columns: str) -> tuple[list[str], str, list[Any]]:
    """The threads in export order, and the per-thread query with its extra parameters."""
    if selection.thread_ids is not None:
        threads = list(dict.fromkeys(selection.thread_ids))
    else:
        threads = [r[0] for r in conn.execute(TRACKED_IN_ORDER_SQL)]
        tracked = set(threads)
        threads += [r[0] for r in conn.execute(THREADS_WITH_MESSAGES_SQL) if r[0] not in tracked]
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


def raw_batches(session: Session, selection: Selection) -> Iterator[tuple[str, RawBatch]]:
    """:func:`sqlite_raw_batches` in the session's transaction (SQLite)."""
    return sqlite_raw_batches(driver_of(session), selection)


def selected_rows(session: Session, selection: Selection) -> Iterator[Row]:
    """:func:`sqlite_rows` in the session's transaction (SQLite)."""
    return sqlite_rows(driver_of(session), selection)
