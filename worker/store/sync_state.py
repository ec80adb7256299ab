"""Every statement on the ``sync_state`` table: a thread's cursor and the outcome of its passes.

A pass writes its thread's row twice at most: each page's cursor advance (in the page's
transaction) and one closing UPDATE. Both go straight to the driver on SQLite: through the ORM an
advance cost about 0.2 ms of the single writer's time per page, through the driver 4 us, and a
run writes one closing UPDATE per thread (through SQLAlchemy ~1 ms of the event loop each).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.sql.schema import ScalarElementColumnDefault
from sqlmodel import Session, col

from worker.store.messages import among, driver_of, is_sqlite, sqlite_time
from worker.store.models import SyncState, TrackedThread

_TABLE = SyncState.__table__  # type: ignore[attr-defined]
CURSOR = ("initial_done", "initial_after", "high_water_id", "last_full_at")

# -- the statements ----------------------------------------------------------------------------

ADVANCE_SQL = "UPDATE sync_state SET pages = pages + 1{sets} WHERE thread_id = ?"
CLOSE_SQL = "UPDATE sync_state SET {clauses} WHERE thread_id = ?"
ERROR_KINDS_SELECT = select(col(SyncState.thread_id), col(SyncState.last_error_kind))
SUCCEEDED_SELECT = (
    select(col(SyncState.thread_id))
    .join(TrackedThread, col(TrackedThread.thread_id) == col(SyncState.thread_id))
    .where(col(TrackedThread.state) == "active", col(SyncState.last_success_at).is_not(None))
    .order_by(col(SyncState.last_success_at).desc())
)
# Tracked threads (rows of ``tracked_thread``) with their state, if they have one: the joins whose
# subject is a thread as tracked live here too, beside every other read of ``sync_state``.
_OUTER = (SyncState, col(SyncState.thread_id) == col(TrackedThread.thread_id))
_ADDED_ORDER = (col(TrackedThread.added_at), col(TrackedThread.thread_id))
FIRST_SYNC_SELECT = (
    select(col(TrackedThread.thread_id), col(TrackedThread.state), col(SyncState.initial_done))
    .join(*_OUTER, isouter=True)
    .order_by(*_ADDED_ORDER)
)
TRACKED_WITH_STATE_SELECT = (
    select(TrackedThread, SyncState).join(*_OUTER, isouter=True).order_by(*_ADDED_ORDER)
)
PROBE_SELECT = (
    select(col(TrackedThread.thread_id))
    .join(*_OUTER, isouter=True)
    .where(col(TrackedThread.state) == "active")
    .order_by(col(SyncState.last_success_at).is_(None), col(TrackedThread.added_at))
    .limit(1)
)


def get(session: Session, thread_id: str) -> SyncState | None:
    return session.get(SyncState, thread_id)


def ensure(session: Session, thread_id: str) -> SyncState:
    """The thread's row, created with the model's defaults if it has none."""
    state = session.get(SyncState, thread_id)
    if state is None:
        state = SyncState(thread_id=thread_id)
        session.add(state)
    return state


def add_imported(session: Session, thread_id: str) -> None:
    """The row of a thread made by ``threadsync import``: nothing to sync first, ever."""
    session.add(SyncState(thread_id=thread_id, initial_done=True))


def add_fresh(session: Session, thread_id: str) -> None:
    """The row of a newly tracked thread, with the model's defaults (its thread row flushed)."""
    session.add(SyncState(thread_id=thread_id))


def insert_defaults_sql(*, postgres: bool, from_cte: str | None = None) -> str:
    """The INSERT of default rows, one per thread id bound (``?``), or per ``thread_id`` of the
    CTE ``from_cte``; rows already present are left as they are."""
    names, defaults = _state_defaults(postgres)
    rows = (
        f"VALUES (?, {defaults})"
        if from_cte is None
        else f"SELECT thread_id, {defaults} FROM {from_cte}"  # noqa: S608 - a CTE name of the caller
    )
    return (
        f"INSERT INTO sync_state (thread_id, {names}) {rows}"  # names, literals: the model
        " ON CONFLICT DO NOTHING"
    )


def _state_defaults(postgres: bool) -> tuple[str, str]:
    """``sync_state``'s columns with a default in the model, and those defaults as SQL
    literals (the migrations give the columns no server defaults)."""
    states: Table = _TABLE
    names, values = [], []
    for column in states.columns:
        default = column.default
        if column.name == "thread_id" or not isinstance(default, ScalarElementColumnDefault):
            continue
        value = default.arg
        if isinstance(value, bool):
            rendered = ("true" if value else "false") if postgres else str(int(value))
        elif isinstance(value, int):
            rendered = str(value)
        else:
            raise TypeError(f"sync_state.{column.name}: no SQL literal for {value!r}")
        names.append(column.name)
        values.append(rendered)
    return ", ".join(names), ", ".join(values)


def first_sync_done(session: Session) -> list[tuple[str, str, bool]]:
    """``(thread_id, tracking state, first sync finished)`` of every tracked thread, in the
    order they were added."""
    return [(r[0], r[1], bool(r[2])) for r in session.execute(FIRST_SYNC_SELECT)]


def tracked_with_state(session: Session) -> list[tuple[TrackedThread, SyncState | None]]:
    """Every tracked thread with its state row (None if it has none), in the order added."""
    return [(r[0], r[1]) for r in session.execute(TRACKED_WITH_STATE_SELECT)]


def probe_thread(session: Session) -> str | None:
    """An active thread, one that synced well if there is one (it surely exists upstream)."""
    found: str | None = session.execute(PROBE_SELECT).scalar()
    return found


def of_threads(session: Session, thread_ids: Sequence[str]) -> dict[str, SyncState]:
    query = select(SyncState).where(among(session, col(SyncState.thread_id), thread_ids))
    return {row.thread_id: row for row in session.scalars(query)}


def backoff_of(
    session: Session, thread_ids: Sequence[str]
) -> dict[str, tuple[int, datetime | None]]:
    """Each thread's consecutive failures and parked-until (the daemon's next-time inputs)."""
    query = select(
        col(SyncState.thread_id), col(SyncState.consecutive_failures), col(SyncState.parked_until)
    ).where(col(SyncState.thread_id).in_(list(thread_ids)))
    return {row[0]: (row[1], row[2]) for row in session.execute(query)}


def error_kinds(session: Session, thread_ids: Sequence[str]) -> dict[str, str | None]:
    query = ERROR_KINDS_SELECT.where(col(SyncState.thread_id).in_(list(thread_ids)))
    return {row[0]: row[1] for row in session.execute(query)}


def last_succeeded(session: Session, limit: int) -> list[str]:
    """Active threads, most recently synced first."""
    return list(session.execute(SUCCEEDED_SELECT.limit(limit)).scalars())


def advance(session: Session, thread_id: str, moved: dict[str, Any]) -> None:
    """A page's advance: one UPDATE of the page count and the cursor columns that moved."""
    unknown = set(moved) - set(CURSOR)
    if unknown:
        raise ValueError(f"not cursor columns: {sorted(unknown)}")
    if is_sqlite(session):
        names = [name for name in CURSOR if name in moved]
        values = [sqlite_time(v) if isinstance(v := moved[name], datetime) else v for name in names]
        sets = "".join(f", {name} = ?" for name in names)
        driver_of(session).execute(ADVANCE_SQL.format(sets=sets), [*values, thread_id])
        return
    session.connection().execute(
        update(_TABLE)
        .where(_TABLE.c.thread_id == thread_id)
        .values(pages=_TABLE.c.pages + 1, **moved)
    )


# A pass's closing state: its thread, the columns it sets, and the counters it adds to.
Closing = tuple[str, dict[str, Any], dict[str, int]]
CLOSE_PG_SQL = "UPDATE sync_state SET {clauses} WHERE thread_id = %s"


def _check_closing(sets: dict[str, Any], adds: dict[str, int]) -> None:
    names = set(sets) | set(adds)
    unknown = names - set(SyncState.model_fields)
    if unknown or "thread_id" in names:
        raise ValueError(f"not sync_state columns to close with: {sorted(unknown)}")


def close(session: Session, thread_id: str, sets: dict[str, Any], adds: dict[str, int]) -> None:
    """A pass's closing state: one UPDATE setting ``sets`` and adding ``adds``."""
    _check_closing(sets, adds)
    if is_sqlite(session):
        clauses = [f"{name} = ?" for name in sets] + [f"{name} = {name} + ?" for name in adds]
        values = [sqlite_time(v) if isinstance(v, datetime) else v for v in sets.values()]
        driver_of(session).execute(
            CLOSE_SQL.format(clauses=", ".join(clauses)), [*values, *adds.values(), thread_id]
        )
        return
    values_pg: dict[str, Any] = dict(sets)
    values_pg.update({name: _TABLE.c[name] + n for name, n in adds.items()})
    session.connection().execute(
        update(_TABLE).where(_TABLE.c.thread_id == thread_id).values(**values_pg)
    )


def close_many(session: Session, closings: Sequence[Closing]) -> None:
    """Several passes' closing states, each as :func:`close` writes it, in the order given.

    On PostgreSQL the closings that set and add the same columns share one ``executemany``,
    which psycopg sends as one pipeline (one round trip for all, where :func:`close` costs one
    each); a thread met a second time first sends what came before it, so each thread's rows
    are written in order. If a statement fails, rows before it may be written: the caller runs
    this in a savepoint of its own. On SQLite (no round trips to save) one UPDATE each.
    """
    for _, sets, adds in closings:
        _check_closing(sets, adds)
    if is_sqlite(session):
        for thread_id, sets, adds in closings:
            close(session, thread_id, sets, adds)
        return
    shapes: dict[tuple[tuple[str, ...], tuple[str, ...]], list[tuple[Any, ...]]] = {}
    seen: set[str] = set()

    def send() -> None:
        conn = session.connection()
        for (set_names, add_names), rows in shapes.items():
            clauses = [f"{name} = %s" for name in set_names]
            clauses += [f"{name} = {name} + %s" for name in add_names]
            conn.exec_driver_sql(CLOSE_PG_SQL.format(clauses=", ".join(clauses)), rows)
        shapes.clear()
        seen.clear()

    for thread_id, sets, adds in closings:
        if thread_id in seen:
            send()
        seen.add(thread_id)
        rows = shapes.setdefault((tuple(sets), tuple(adds)), [])
        rows.append((*sets.values(), *adds.values(), thread_id))
    send()


def close_missing(
    session: Session, thread_id: str, *, now: datetime, error: str | None, kind: str, failed: bool
) -> bool:
    """A 404's closing state, as the run decided it (``kind``); whether the thread has a row."""
    state = session.get(SyncState, thread_id)
    if state is None:
        return False
    state.last_sync_at, state.last_error, state.last_error_kind = now, error, kind
    state.consecutive_failures = state.consecutive_failures + 1 if failed else 0
    return True
