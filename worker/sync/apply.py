"""Applying one page of listed messages to the mirror, inside the caller's transaction.

This is the hot path of every sync. A page is first *planned* (one SELECT of the page's ids, or a
full walk's census of the thread, then pure comparison), and only the rows that differ are
written: an unchanged message costs no write, and a full walk over an unchanged page needs no
write transaction at all. Comparison is by a digest of the bytes ``raw`` stores: the object
exactly as it was received, unknown fields and key order included (a mere reordering of keys is
told apart from a change by comparing the objects, ``settle``).

A page that should be wholly new (a first sync's, a forward walk's) skips the SELECT on SQLite: it
is planned as new before it reaches the writer and goes in as one INSERT, and only if that finds a
stored id does it take the ordinary way (``plan_new``, ``insert_new``).

On SQLite the statements go straight to the DB-API connection in the same transaction:
SQLAlchemy's per-row parameter processing cost three times the insert itself. They are also shaped
so that a page crosses the driver in one step (a multi-row INSERT, reads aggregated into one JSON
row): Python's sqlite3 releases and retakes the GIL at every row it steps through, and in a worker
thread each retake waits behind the event loop. PostgreSQL goes through SQLAlchemy Core, which
batches well with psycopg.
"""

from __future__ import annotations

import sqlite3
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache, cached_property
from hashlib import sha256
from itertools import pairwise
from typing import Any, Literal, NamedTuple, cast

import orjson
from sqlalchemy import bindparam, select, update
from sqlmodel import Session, col

from worker.errors import TransientError
from worker.jsontext import column_text, dumps, loads
from worker.store.models import Message, SyncState
from worker.sync.order import Place, TieOrder, place_ascending, place_descending

Direction = Literal["asc", "desc"]
_TABLE = Message.__table__  # type: ignore[attr-defined]
_COLUMNS = (
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
# ``raw`` is bound as the UTF-8 bytes orjson made, and SQLite stores them as TEXT as they are:
# binding a str instead cost a decode on the event loop and an encode in the single writer for
# every message (0.2 s each for a 100,000-message first sync), and the str kept both copies.
_RAW = "CAST(? AS TEXT)"
_ROW_MARKS = "(" + ", ".join(_RAW if c == "raw" else "?" for c in _COLUMNS) + ")"
_STORED_COLUMNS = "id, created_at, tie_rank, digest, deleted_at IS NOT NULL"
_UPDATE_SQL = (
    "UPDATE message SET created_at=?, tie_rank=?, role=?, status=?, run_id=?, assistant_id=?,"
    " raw=CAST(? AS TEXT), digest=?, updated_at=?, deleted_at=NULL WHERE id=?"
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


@dataclass(slots=True)
class Counts:
    """What a page, a thread pass or a run did to the mirror."""

    added: int = 0
    changed: int = 0
    deleted: int = 0
    restored: int = 0

    def __iadd__(self, other: Counts) -> Counts:
        self.added += other.added
        self.changed += other.changed
        self.deleted += other.deleted
        self.restored += other.restored
        return self

    @property
    def writes(self) -> int:
        return self.added + self.changed + self.deleted + self.restored


def digest_of(raw: bytes) -> str:
    """What change detection compares: SHA-256 of the object's bytes as ``raw`` stores them,
    the first 128 bits in hex (migration 0003 set every stored row's to this).

    Over the bytes, not a key-sorted re-serialisation: that second serialisation was a third of
    the event loop's work per message. A server that sends the same object with its keys in
    another order gives another digest; :func:`settle` then compares the objects themselves.
    """
    return sha256(raw).hexdigest()[:32]


def prepare(obj: Any, thread_id: str) -> Incoming:
    """Check the fields the mirror relies on; a malformed object is a (retryable) bad answer.

    The hot path of every listing (once per message listed): exact type checks, no helpers.
    """
    if type(obj) is not dict:
        raise TransientError(f"thread {thread_id}: the server listed a non-object message")
    get = obj.get
    msg_id, created_at = get("id"), get("created_at")
    if type(msg_id) is not str or not msg_id:
        raise TransientError(f"thread {thread_id}: the server listed a message without an id")
    if type(created_at) is not int:  # bool is not int here, as it should be
        raise TransientError(f"thread {thread_id}: message {msg_id} has no integer created_at")
    return Incoming(
        msg_id,
        created_at,
        # Copied to a bytes object of its exact size: orjson's own answer keeps the buffer it
        # grew while writing, several times the text (pages waiting to be stored held 5x).
        # U+0000 is written as its escape: the bytes are text any database stores.
        raw := memoryview(dumps(obj)).tobytes(),
        digest_of(raw),
        column_text(get("role")),
        column_text(get("status")),
        column_text(get("run_id")),
        column_text(get("assistant_id")),
    )


class Stored(NamedTuple):
    """What the mirror holds of a message, as far as comparing needs."""

    id: str
    created_at: int
    rank: int
    digest: str
    deleted: bool


def _is_sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def _driver(session: Session) -> Any:
    """The DB-API connection of the session's current transaction."""
    return session.connection().connection.driver_connection


def _sqlite_has_json() -> bool:
    """Whether the linked SQLite has its JSON functions (built in since 3.38, optional before)."""
    try:
        with closing(sqlite3.connect(":memory:")) as conn:
            conn.execute("SELECT json_group_array(json_array(1, 'a'))").fetchone()
    except sqlite3.Error:
        return False
    return True


_SQLITE_JSON = _sqlite_has_json()


def _sqlite_rows(session: Session, columns: str, where: str, params: Sequence[Any]) -> list[Any]:
    """``SELECT columns FROM message WHERE where`` on SQLite, as a list of row sequences.

    Read in one step where SQLite can: Python's sqlite3 releases and retakes the GIL around every
    row it steps through, and in a worker thread each retake waits behind an event loop busy
    parsing pages. A full walk's page read (about 200 rows) spent ~15 ms in its thread for under
    half a millisecond of SQLite work, and with two readers that capped a reconcile at ~130
    pages/s (bench_reconcile: 7.2 s, then 5.6 s). Aggregated by SQLite into one JSON array, the
    rows cross in a single step and orjson decodes them.
    """
    driver = _driver(session)
    if _SQLITE_JSON:
        sql = f"SELECT json_group_array(json_array({columns})) FROM message WHERE {where}"  # noqa: S608 - constants of this module
        return cast(list[Any], orjson.loads(driver.execute(sql, params).fetchone()[0]))
    sql = f"SELECT {columns} FROM message WHERE {where}"  # noqa: S608 - ditto
    return cast(list[Any], driver.execute(sql, params).fetchall())


def load_stored(session: Session, ids: Sequence[str]) -> dict[str, Stored]:
    if not ids:
        return {}
    if _is_sqlite(session):
        marks = ", ".join("?" * len(ids))
        rows = _sqlite_rows(session, _STORED_COLUMNS, f"id IN ({marks})", ids)
        return {r[0]: Stored(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows}
    result = session.execute(_STORED_SELECT.where(col(Message.id).in_(ids)))
    return {r[0]: Stored(r[0], r[1], r[2], r[3], r[4] is not None) for r in result}


# What comparing needs of a stored message, through SQLAlchemy (PostgreSQL).
_STORED_SELECT = select(
    col(Message.id),
    col(Message.created_at),
    col(Message.tie_rank),
    col(Message.digest),
    col(Message.deleted_at),
)


@dataclass(slots=True)
class Plan:
    """The writes one page needs, computed without writing anything."""

    counts: Counts = field(default_factory=Counts)
    inserts: list[tuple[Incoming, int]] = field(default_factory=list)
    updates: list[tuple[Incoming, int]] = field(default_factory=list)
    last: Place | None = None
    # Updates counted as changed on their digest alone: (id, whether the rank moved too).
    suspects: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.inserts and not self.updates


def plan_page(
    stored: dict[str, Stored],
    page: Iterable[Incoming],
    *,
    direction: Direction,
    ties: TieOrder,
    prev: Place | None,
) -> Plan:
    """Rank each listed message after ``prev`` and decide what must be written (pure)."""
    plan = Plan(last=prev)
    for m in page:
        old = stored.get(m.id)
        old_rank = old.rank if old is not None and old.created_at == m.created_at else None
        if direction == "asc":
            rank = place_ascending(plan.last, m.created_at, old_rank)
        else:
            rank = place_descending(plan.last, m.created_at, old_rank, ties)
        plan.last = Place(m.created_at, rank)
        if old is None:
            plan.counts.added += 1
            plan.inserts.append((m, rank))
            continue
        content = old.digest != m.digest
        if old.deleted:
            plan.counts.restored += 1
        elif content:
            plan.counts.changed += 1
            plan.suspects.append((m.id, rank != old.rank))
        if content or old.deleted or rank != old.rank:
            plan.updates.append((m, rank))
    return plan


def settle(session: Session, plan: Plan) -> None:
    """Drop from ``plan`` the changes that are only the server reordering an object's keys.

    Digests are over bytes, so the same object sent with its keys in another order looks
    changed; the stored objects of those messages are read and compared as objects. Equal: not
    counted as changed, and not written unless its place moved. (Servers serialise consistently,
    so this reads nothing in practice; it keeps "an unchanged message causes no write" true for
    one that does not.)
    """
    if not plan.suspects:
        return
    ids = [mid for mid, _ in plan.suspects]
    if _is_sqlite(session):
        marks = ", ".join("?" * len(ids))
        stored = {r[0]: r[1] for r in _sqlite_rows(session, "id, raw", f"id IN ({marks})", ids)}
    else:
        query = select(col(Message.id), col(Message.raw)).where(col(Message.id).in_(ids))
        stored = {r[0]: r[1] for r in session.execute(query)}
    incoming = {m.id: m for m, _ in plan.updates}
    same: set[str] = set()
    for mid, moved in plan.suspects:
        old = stored.get(mid)
        if old is not None and loads(old) == loads(incoming[mid].raw):
            plan.counts.changed -= 1
            if not moved:
                same.add(mid)
    plan.suspects = []
    if same:
        plan.updates = [(m, rank) for m, rank in plan.updates if m.id not in same]


def _fields(m: Incoming) -> tuple[str | None, str | None, str | None, str | None]:
    return m.role, m.status, m.run_id, m.assistant_id


def _sqlite_time(when: datetime) -> str:
    # The text form SQLAlchemy's SQLite DateTime type reads back (UTC, no offset).
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _stored(m: Incoming, rank: int) -> tuple[Any, ...]:
    """created_at .. digest, the columns an insert and an update of ``m`` share (SQLite order)."""
    return (m.created_at, rank, m.role, m.status, m.run_id, m.assistant_id, m.raw, m.digest)


@cache
def _insert_sql(rows: int) -> str:
    return f"INSERT INTO message ({', '.join(_COLUMNS)}) VALUES " + ", ".join([_ROW_MARKS] * rows)  # noqa: S608 - see above


def _rows_per_insert(driver: Any) -> int:
    limit: int = driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return max(1, limit // len(_COLUMNS))


def _insert_values(
    thread_id: str, inserts: list[tuple[Incoming, int]], now: datetime
) -> list[tuple[Any, ...]]:
    stamp = _sqlite_time(now)
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


class NewPage(NamedTuple):
    """A page planned as wholly new, ready to go into the mirror as one INSERT."""

    counts: Counts
    last: Place | None
    rows: int
    params: list[Any]


def plan_new(
    thread_id: str,
    page: list[Incoming],
    *,
    direction: Direction,
    ties: TieOrder,
    prev: Place | None,
    now: datetime,
) -> NewPage | None:
    """Plan ``page`` as if none of it were stored: pure, so it is done before the page reaches
    the single writer, whose time is what a first sync waits on."""
    if not page:
        return None
    plan = plan_page({}, page, direction=direction, ties=ties, prev=prev)
    rows = _insert_values(thread_id, plan.inserts, now)
    return NewPage(plan.counts, plan.last, len(rows), [value for row in rows for value in row])


def insert_new(session: Session, page: NewPage) -> tuple[Counts, Place | None] | None:
    """Store a page that should be wholly new with one INSERT and no read first (SQLite).

    A first sync and a forward walk list messages the mirror has not seen, and reading their ids
    before writing cost a SELECT per page in the single writer (about 1 s of a 100,000-message
    first sync, half of it waiting for the GIL to come back). The INSERT has no ON CONFLICT: if
    any message is already stored, the statement fails whole (SQLite undoes the failed
    statement, not the transaction) and this returns None, having written nothing; the caller
    then applies the page the ordinary way. PostgreSQL always goes the ordinary way (a failed
    statement there aborts the transaction).
    """
    if not _is_sqlite(session):
        return None
    driver = _driver(session)
    if page.rows > _rows_per_insert(driver):  # two statements could not fail as one
        return None
    try:
        driver.execute(_insert_sql(page.rows), page.params)
    except sqlite3.IntegrityError:
        return None
    return page.counts, page.last


def write_plan(session: Session, thread_id: str, plan: Plan, now: datetime) -> None:
    """Execute a plan in the session's transaction."""
    if plan.empty:
        return
    if _is_sqlite(session):
        stamp = _sqlite_time(now)
        driver = _driver(session)
        if plan.inserts:
            _insert_rows(driver, _insert_values(thread_id, plan.inserts, now))
        if plan.updates:
            driver.executemany(
                _UPDATE_SQL, [(*_stored(m, rank), stamp, m.id) for m, rank in plan.updates]
            )
        return
    if plan.inserts:
        session.execute(
            _TABLE.insert(),
            [
                dict(zip(_COLUMNS, (m.id, thread_id, m.created_at, rank, *_fields(m),
                                    m.raw.decode(), m.digest, now, now, None), strict=True))
                for m, rank in plan.inserts
            ],
        )  # fmt: skip
    if plan.updates:
        names = ("created_at", "tie_rank", "role", "status", "run_id", "assistant_id")
        rows: list[dict[str, Any]] = [
            {"_id": m.id, "raw": m.raw.decode(), "digest": m.digest, "updated_at": now,
             **dict(zip(names, (m.created_at, rank, *_fields(m)), strict=True))}
            for m, rank in plan.updates
        ]  # fmt: skip
        values: dict[str, Any] = {k: bindparam(k) for k in rows[0] if k != "_id"}
        session.execute(
            update(_TABLE).where(_TABLE.c.id == bindparam("_id")).values(deleted_at=None, **values),
            rows,
            execution_options={"synchronize_session": False},
        )


_CURSOR = ("initial_done", "initial_after", "high_water_id", "last_full_at")


def advance_cursor(session: Session, thread_id: str, moved: dict[str, Any]) -> None:
    """A page's advance: one UPDATE of ``sync_state``'s page count and the cursor columns that
    moved, in the page's transaction.

    On SQLite straight to the driver, like the page itself: through the ORM this UPDATE cost
    about 0.2 ms of the single writer's time per page, through the driver 4 us.
    """
    unknown = set(moved) - set(_CURSOR)
    if unknown:
        raise ValueError(f"not cursor columns: {sorted(unknown)}")
    if _is_sqlite(session):
        names = [name for name in _CURSOR if name in moved]
        sets = "".join(f", {name} = ?" for name in names)
        values = [
            _sqlite_time(v) if isinstance(v := moved[name], datetime) else v for name in names
        ]
        _driver(session).execute(
            f"UPDATE sync_state SET pages = pages + 1{sets} WHERE thread_id = ?",  # noqa: S608 - names from _CURSOR
            [*values, thread_id],
        )
        return
    table = SyncState.__table__  # type: ignore[attr-defined]
    session.connection().execute(
        update(table).where(table.c.thread_id == thread_id).values(pages=table.c.pages + 1, **moved)
    )


def close_state(
    session: Session, thread_id: str, sets: dict[str, Any], adds: dict[str, int]
) -> None:
    """A pass's closing state: one UPDATE of ``sync_state`` setting ``sets`` and adding ``adds``.

    On SQLite straight to the driver, like :func:`advance_cursor`: a run writes one per thread
    (200 for a reconcile of the benchmark), and through SQLAlchemy each cost ~1 ms of the event
    loop to build and more of the writer's time to execute, against microseconds here.
    """
    names = set(sets) | set(adds)
    unknown = names - set(SyncState.model_fields)
    if unknown or "thread_id" in names:
        raise ValueError(f"not sync_state columns to close with: {sorted(unknown)}")
    if _is_sqlite(session):
        clauses = [f"{name} = ?" for name in sets] + [f"{name} = {name} + ?" for name in adds]
        values = [_sqlite_time(v) if isinstance(v, datetime) else v for v in sets.values()]
        _driver(session).execute(
            f"UPDATE sync_state SET {', '.join(clauses)} WHERE thread_id = ?",  # noqa: S608 - checked names
            [*values, *adds.values(), thread_id],
        )
        return
    table = SyncState.__table__  # type: ignore[attr-defined]
    values_pg: dict[str, Any] = dict(sets)
    values_pg.update({name: table.c[name] + n for name, n in adds.items()})
    session.connection().execute(
        update(table).where(table.c.thread_id == thread_id).values(**values_pg)
    )


def apply_page(
    session: Session,
    thread_id: str,
    page: Iterable[Incoming],
    *,
    direction: Direction,
    ties: TieOrder,
    prev: Place | None,
    now: datetime,
) -> tuple[Counts, Place | None]:
    """Plan and write a page walked in ``direction``; return what changed and the new position."""
    msgs = list(page)
    plan = plan_page(
        load_stored(session, [m.id for m in msgs]), msgs, direction=direction, ties=ties, prev=prev
    )
    settle(session, plan)
    write_plan(session, thread_id, plan, now)
    return plan.counts, plan.last


def unlisted(
    session: Session, thread_id: str, *, low: int | None, high: int | None, seen: set[str]
) -> list[str]:
    """Live messages with ``low <= created_at < high`` that a full walk did not list."""
    if _is_sqlite(session):  # once per page of a full walk: straight to the driver, as above
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


# The census read, in a fixed order (its bytes are the walk memo's key, see worker/sync/memo.py);
# ``gone`` names the last column for the JSON form below. The index serves the order up to ties.
_CENSUS_SQL = (
    f"SELECT {_STORED_COLUMNS} AS gone FROM message WHERE thread_id = ?"  # noqa: S608 - constants
    " ORDER BY created_at, tie_rank, id LIMIT ?"
)
_CENSUS_JSON_SQL = (
    "SELECT count(*), json_group_array(json_array(id, created_at, tie_rank, digest, gone))"  # noqa: S608 - constants
    f" FROM ({_CENSUS_SQL})"
)


class Census:
    """A thread's stored messages as a full walk compares them, read once for the whole walk.

    Without it every page of a reconcile cost a read transaction (the page's ids, then the
    window's live ids) in a worker thread: four reads per 500-message thread, ~800 for the
    100,000-message benchmark, each a thread hand-off and a GIL round trip for under a
    millisecond of SQLite work. Read once (capped at ``LIMIT`` messages, so memory stays flat for
    any thread; a larger thread is compared page by page as before), unchanged pages are
    recognised with no read at all. A page that differs is planned again inside its write
    transaction from fresh reads, so the census only ever decides what needs no write.

    ``sig`` is the SHA-256 of the census as read. The rows are decoded on first use only: a walk
    its memo replays never needs them.
    """

    LIMIT = 2000

    def __init__(self, sig: bytes, rows: Callable[[], list[Stored]]) -> None:
        self.sig = sig
        self._rows = rows

    @cached_property
    def stored(self) -> dict[str, Stored]:
        return {r.id: r for r in self._rows()}

    @cached_property
    def _live(self) -> tuple[list[int], list[str]]:
        live = sorted((r.created_at, r.id) for r in self.stored.values() if not r.deleted)
        return [at for at, _ in live], [mid for _, mid in live]

    def unchanged_by(self, ascending: Sequence[tuple[str, int, str]]) -> bool:
        """Whether an oldest-first full walk listing ``ascending`` (``(id, created_at, digest)``
        in listing order) would find nothing to write here: every message stored, live, the
        same, where the walk would rank it, and no live message unlisted (the proof behind a
        memo of a walk that wrote, see worker/sync/memo.py)."""
        stored = self.stored
        ids = {mid for mid, _, _ in ascending}
        if len(ids) != len(ascending):
            return False
        if any(at < before for (_, before, _), (_, at, _) in pairwise(ascending)):
            return False  # not an ascending listing: a walk would restart
        if any(not r.deleted and r.id not in ids for r in stored.values()):
            return False
        page = [Incoming(mid, at, b"", dg, None, None, None, None) for mid, at, dg in ascending]
        plan = plan_page(stored, page, direction="asc", ties="reverse", prev=None)
        return plan.empty and not plan.counts.writes

    def unlisted(self, *, low: int | None, high: int | None, seen: frozenset[str]) -> list[str]:
        """As :func:`unlisted`, from the census."""
        at, ids = self._live
        start = 0 if low is None else bisect_left(at, low)
        end = len(at) if high is None else bisect_left(at, high)
        return [mid for mid in ids[start:end] if mid not in seen]


def _census_of(rows: list[Stored]) -> Census:
    sig = sha256(orjson.dumps([list(r) for r in rows])).digest()
    return Census(sig, lambda: rows)


def census_sig(rows: Sequence[tuple[str, int, int, str, bool]], *, sqlite: bool) -> bytes:
    """The signature :func:`load_census` would read if the mirror held exactly ``rows`` of the
    thread (``Stored`` fields, in census order), computed without reading anything.

    If the mirror holds anything else, its census has another signature: a memo keyed by this
    one is then never replayed.
    """
    if sqlite and _SQLITE_JSON:  # the bytes of SQLite's json_group_array, as load_census hashes
        return sha256(orjson.dumps([(*r[:4], 1 if r[4] else 0) for r in rows])).digest()
    return sha256(orjson.dumps([tuple(r) for r in rows])).digest()


def load_census(session: Session, thread_id: str, limit: int | None = None) -> Census | None:
    """The thread's census, or None when it holds more than ``limit`` (``Census.LIMIT``)."""
    limit = Census.LIMIT if limit is None else limit
    if _is_sqlite(session):
        driver = _driver(session)
        if _SQLITE_JSON:  # one step, see _sqlite_rows; decoded only if the walk needs it
            count, text = driver.execute(_CENSUS_JSON_SQL, [thread_id, limit + 1]).fetchone()
            if count > limit:
                return None
            data = text.encode()
            return Census(
                sha256(data).digest(),
                lambda: [Stored(r[0], r[1], r[2], r[3], bool(r[4])) for r in orjson.loads(data)],
            )
        found = driver.execute(_CENSUS_SQL, [thread_id, limit + 1]).fetchall()
        stored = [Stored(r[0], r[1], r[2], r[3], bool(r[4])) for r in found]
    else:
        result = session.execute(
            _STORED_SELECT.where(col(Message.thread_id) == thread_id)
            .order_by(col(Message.created_at), col(Message.tie_rank), col(Message.id))
            .limit(limit + 1)
        )
        stored = [Stored(r[0], r[1], r[2], r[3], r[4] is not None) for r in result]
    if len(stored) > limit:
        return None
    return _census_of(stored)


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
