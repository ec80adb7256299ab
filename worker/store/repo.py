"""Statements on ``tracked_thread``, ``mirror_meta`` and the run history.

Statements on ``message`` and ``sync_state`` live in their own modules (``messages.py``,
``sync_state.py``); what here needs them (a thread's status, a new thread's state row) calls those.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col

from worker.store import messages, sync_state
from worker.store.models import MirrorMeta, SyncRun, SyncRunThread, TrackedThread, utcnow


def add_threads(session: Session, thread_ids: Iterable[str]) -> list[str]:
    """Track threads; returns the ids that were new or re-activated. Idempotent."""
    changed: list[str] = []
    for thread_id in thread_ids:
        row = session.get(TrackedThread, thread_id)
        if row is None:
            session.add(TrackedThread(thread_id=thread_id))
            session.flush()  # the state row refers to the thread row
            sync_state.add_fresh(session, thread_id)
            changed.append(thread_id)
        elif row.state != "active":
            row.state, row.gone_at, row.next_sync_at = "active", None, None
            changed.append(thread_id)
    session.flush()
    return changed


def remove_threads(session: Session, thread_ids: Iterable[str]) -> list[str]:
    """Stop syncing threads (state ``paused``); their mirrored messages are kept."""
    removed = []
    for thread_id in thread_ids:
        row = session.get(TrackedThread, thread_id)
        if row is not None and row.state != "paused":
            row.state = "paused"
            removed.append(thread_id)
    return removed


# Ids per statement in the bulk paths: under SQLite's 32,766 bound parameters, and rows per
# INSERT batch small enough that PostgreSQL's multi-row VALUES stays a modest statement.
BULK_CHUNK = 5000


@dataclass
class Tracking:
    """What :func:`track_many` did, each list in the order the ids were given."""

    added: list[str] = field(default_factory=list)
    reactivated: list[str] = field(default_factory=list)  # were paused or gone, active again
    was: dict[str, str] = field(default_factory=dict)  # a reactivated thread's state before
    already: list[str] = field(default_factory=list)  # tracked already, left as they were


def _chunks(values: Sequence[str], size: int = BULK_CHUNK) -> Iterable[list[str]]:
    for start in range(0, len(values), size):
        yield list(values[start : start + size])


# Above this many ids, their states are read by one scan of tracked_thread instead of IN lists:
# SQLAlchemy renders each IN list's thousands of parameters afresh, ~50 ms per 5,000.
SCAN_ABOVE = 2000


def tracking_states(session: Session, thread_ids: Sequence[str]) -> dict[str, str]:
    """The tracking state of each of ``thread_ids`` that is tracked at all."""
    columns = select(col(TrackedThread.thread_id), col(TrackedThread.state))
    if len(thread_ids) > SCAN_ABOVE:
        wanted = set(thread_ids)
        return {row[0]: row[1] for row in session.execute(columns) if row[0] in wanted}
    out: dict[str, str] = {}
    for chunk in _chunks(thread_ids):
        query = columns.where(col(TrackedThread.thread_id).in_(chunk))
        out.update((row[0], row[1]) for row in session.execute(query))
    return out


def _insert_tracked(session: Session, thread_ids: list[str], start: datetime) -> None:
    """New ``tracked_thread`` rows, ``added_at`` a microsecond apart, each with its
    ``sync_state`` row (the model's defaults); a thread tracked in the meantime by another
    process is left as it is (``ON CONFLICT DO NOTHING``).

    Below SQLAlchemy's row-by-row parameter processing (~20 us a row, most of the time of
    100,000 ids): SQLite gets the driver's ``executemany``; PostgreSQL one statement per batch,
    ``unnest`` of two arrays inserting the threads and, through ``RETURNING``, their states (an
    INSERT ... SELECT of the threads lacking a state took 4.5 s of 100,000: fresh rows have no
    statistics, and the planner chose a nested-loop anti-join).
    """
    conn = session.connection()
    postgres = conn.dialect.name == "postgresql"
    stamps = [start + timedelta(microseconds=n) for n in range(len(thread_ids))]
    if postgres:
        sql = (
            "WITH new AS (INSERT INTO tracked_thread (thread_id, added_at, state)"  # noqa: S608 - the state INSERT from the model, ids bound
            " SELECT t, a, 'active' FROM unnest(%s::text[], %s::timestamptz[]) AS u(t, a)"
            " ON CONFLICT DO NOTHING RETURNING thread_id) "
            + sync_state.insert_defaults_sql(postgres=True, from_cte="new")
        )
        for offset in range(0, len(thread_ids), BULK_CHUNK * 4):
            window = slice(offset, offset + BULK_CHUNK * 4)
            conn.exec_driver_sql(sql, (thread_ids[window], stamps[window]))
        return
    conn.exec_driver_sql(
        "INSERT INTO tracked_thread (thread_id, added_at, state) VALUES (?, ?, 'active')"
        " ON CONFLICT DO NOTHING",
        list(zip(thread_ids, map(sqlite_time, stamps), strict=True)),
    )
    conn.exec_driver_sql(
        sync_state.insert_defaults_sql(postgres=False),
        [(thread_id,) for thread_id in thread_ids],
    )


def sqlite_time(stamp: datetime) -> str:
    """A UTC time as SQLAlchemy stores a ``DateTime`` in SQLite (``2026-12-06 08:44:31.444015``),
    by the C ``isoformat`` instead of its Python formatter: a third of the time of 100,000 ids.
    A test keeps the two equal."""
    naive = stamp.astimezone(UTC).replace(tzinfo=None) if stamp.tzinfo else stamp
    return naive.isoformat(" ", "microseconds")


def track_many(
    session: Session,
    thread_ids: Sequence[str],
    *,
    reactivate: bool = True,
    now: datetime | None = None,
) -> Tracking:
    """Track ``thread_ids`` (distinct, already checked) with a few set-wide statements.

    One ORM object per id took minutes for 100,000 ids (bench_import); this is a read of the
    states, bulk inserts of the new rows, one INSERT ... SELECT of their sync states and
    chunked UPDATEs of the re-activated. ``added_at`` rises by a microsecond per id, so the
    threads keep the order they were given in (exports follow it). ``reactivate``: paused or
    gone threads become active again (as `threads add` does); without it they are counted as
    already tracked (discovery never undoes a removal).
    """
    states = tracking_states(session, thread_ids)
    result = Tracking()
    for thread_id in thread_ids:
        state = states.get(thread_id)
        if state is None:
            result.added.append(thread_id)
        elif state != "active" and reactivate:
            result.reactivated.append(thread_id)
            result.was[thread_id] = state
        else:
            result.already.append(thread_id)
    if result.added:
        _insert_tracked(session, result.added, now or utcnow())
    for chunk in _chunks(result.reactivated):
        session.execute(
            update(TrackedThread)
            .where(col(TrackedThread.thread_id).in_(chunk))
            .values(state="active", gone_at=None, next_sync_at=None)
        )
    return result


@dataclass
class Pausing:
    """What :func:`pause_many` did."""

    paused: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)  # paused before
    untracked: list[str] = field(default_factory=list)


def pause_many(session: Session, thread_ids: Sequence[str]) -> Pausing:
    """Stop syncing ``thread_ids`` (``paused``) in chunked UPDATEs; messages are kept."""
    states = tracking_states(session, thread_ids)
    result = Pausing()
    for thread_id in thread_ids:
        state = states.get(thread_id)
        if state is None:
            result.untracked.append(thread_id)
        elif state == "paused":
            result.already.append(thread_id)
        else:
            result.paused.append(thread_id)
    for chunk in _chunks(result.paused):
        session.execute(
            update(TrackedThread)
            .where(col(TrackedThread.thread_id).in_(chunk))
            .values(state="paused")
        )
    return result


def active_thread_ids(session: Session, *, gone: bool = False) -> list[str]:
    """Tracked threads to sync, in the order they were added (``gone``: those marked gone too,
    for their re-check)."""
    states = ("active", "gone") if gone else ("active",)
    query = select(col(TrackedThread.thread_id)).where(col(TrackedThread.state).in_(states))
    return [row[0] for row in session.execute(query.order_by(col(TrackedThread.added_at)))]


def any_tracked(session: Session) -> bool:
    """Whether any thread is tracked at all (active, paused or gone)."""
    return session.execute(select(col(TrackedThread.thread_id)).limit(1)).first() is not None


def tracked(session: Session, thread_ids: Sequence[str]) -> dict[str, TrackedThread]:
    rows = session.exec(
        select(TrackedThread).where(col(TrackedThread.thread_id).in_(thread_ids))  # type: ignore[call-overload]
    )
    return {row[0].thread_id: row[0] for row in rows}


class Standing(NamedTuple):
    """What a run's plan reads of a tracked thread."""

    state: str
    gone_at: datetime | None


def standings(session: Session, thread_ids: Sequence[str]) -> dict[str, Standing]:
    """Each of ``thread_ids`` that is tracked, with its state and when it was marked gone.

    Two columns instead of :func:`tracked`'s ORM objects: the daemon plans a batch of a hundred
    or more threads every few seconds, and building (and identity-mapping) an object per thread
    cost more than the read itself.
    """
    query = select(
        col(TrackedThread.thread_id), col(TrackedThread.state), col(TrackedThread.gone_at)
    ).where(messages.among(session, col(TrackedThread.thread_id), thread_ids))
    return {row[0]: Standing(row[1], row[2]) for row in session.execute(query)}


def tracked_in_order(session: Session) -> list[str]:
    """Tracked thread ids in the order they were added."""
    query = select(col(TrackedThread.thread_id)).order_by(
        col(TrackedThread.added_at), col(TrackedThread.thread_id)
    )
    return [r[0] for r in session.execute(query)]


def mark_gone(session: Session, thread_id: str, now: datetime) -> None:
    row = session.get(TrackedThread, thread_id)
    if row is not None and row.state != "gone":
        row.state, row.gone_at = "gone", now


def get_meta(session: Session, key: str) -> str | None:
    row = session.get(MirrorMeta, key)
    return None if row is None else row.value


def set_meta(session: Session, key: str, value: str) -> None:
    """Set a fact: one upsert, so two processes setting it at once both succeed."""
    table = MirrorMeta.__table__  # type: ignore[attr-defined]
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    now = utcnow()
    statement = insert(table).values(key=key, value=value, updated_at=now)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[table.c.key], set_={"value": value, "updated_at": now}
        )
    )


def delete_meta(session: Session, key: str) -> None:
    session.execute(delete(MirrorMeta).where(col(MirrorMeta.key) == key))


@dataclass(frozen=True)
class ThreadStatus:
    """One line of `threadsync status` / `threads list`."""

    thread_id: str
    state: str
    gone_at: datetime | None
    messages: int
    deleted: int
    in_progress: int
    last_sync_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    initial_done: bool


def thread_statuses(session: Session) -> list[ThreadStatus]:
    counts = messages.status_counts(session)
    none = messages.StatusCounts(0, 0, 0)
    out = []
    for thread, state in sync_state.tracked_with_state(session):
        count = counts.get(thread.thread_id, none)
        out.append(
            ThreadStatus(
                thread_id=thread.thread_id,
                state=thread.state,
                gone_at=thread.gone_at,
                messages=count.live,
                deleted=count.deleted,
                in_progress=count.in_progress,
                last_sync_at=state.last_sync_at if state else None,
                last_success_at=state.last_success_at if state else None,
                last_error=state.last_error if state else None,
                initial_done=bool(state.initial_done) if state else False,
            )
        )
    return out


PRUNE_BATCH = 500  # runs per transaction: a long backlog never holds SQLite's writer for long


def prune_runs(session: Session, before: datetime, *, limit: int = PRUNE_BATCH) -> int:
    """Delete up to ``limit`` finished runs started before ``before``, with their per-thread rows;
    returns how many runs went. A run still open (no ``finished_at``) is never touched."""
    ids = list(
        session.execute(
            select(col(SyncRun.id))
            .where(col(SyncRun.finished_at).is_not(None), col(SyncRun.started_at) < before)
            .order_by(col(SyncRun.id))
            .limit(limit)
        ).scalars()
    )
    if not ids:
        return 0
    session.execute(delete(SyncRunThread).where(col(SyncRunThread.run_id).in_(ids)))
    session.execute(delete(SyncRun).where(col(SyncRun.id).in_(ids)))
    return len(ids)
