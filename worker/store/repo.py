"""Queries on tracked threads, sync state and mirror facts (all but the page hot path)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, Table, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert
from sqlmodel import Session, col

from worker.store.models import (
    Message,
    MirrorMeta,
    SyncRun,
    SyncRunThread,
    SyncState,
    TrackedThread,
    utcnow,
)


def add_threads(session: Session, thread_ids: Iterable[str]) -> list[str]:
    """Track threads; returns the ids that were new or re-activated. Idempotent."""
    changed: list[str] = []
    for thread_id in thread_ids:
        row = session.get(TrackedThread, thread_id)
        if row is None:
            session.add(TrackedThread(thread_id=thread_id))
            session.flush()  # the state row refers to the thread row
            session.add(SyncState(thread_id=thread_id))
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
    already: list[str] = field(default_factory=list)  # tracked already, left as they were


def _chunks(values: Sequence[str], size: int = BULK_CHUNK) -> Iterable[list[str]]:
    for start in range(0, len(values), size):
        yield list(values[start : start + size])


def tracking_states(session: Session, thread_ids: Sequence[str]) -> dict[str, str]:
    """The tracking state of each of ``thread_ids`` that is tracked at all."""
    out: dict[str, str] = {}
    for chunk in _chunks(thread_ids):
        query = select(col(TrackedThread.thread_id), col(TrackedThread.state)).where(
            col(TrackedThread.thread_id).in_(chunk)
        )
        out.update((row[0], row[1]) for row in session.execute(query))
    return out


def _insert_ignoring(session: Session, table: Any) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` in the mirror's dialect: a thread another process
    tracked in the meantime is left as it is, never an error."""
    dialect = session.get_bind().dialect.name
    target: Table = table
    if dialect == "postgresql":
        return postgresql.insert(target).on_conflict_do_nothing()
    return sqlite.insert(target).on_conflict_do_nothing()


def track_many(
    session: Session,
    thread_ids: Sequence[str],
    *,
    reactivate: bool = True,
    now: datetime | None = None,
) -> Tracking:
    """Track ``thread_ids`` (distinct, already checked) with a few multi-row statements.

    One ORM object per id cost ~40 s for 100,000 ids; this is a read of the states, then
    batched ``INSERT ... ON CONFLICT DO NOTHING`` of the new rows. ``added_at`` rises by a
    microsecond per id, so the threads keep the order they were given in (exports follow it).
    ``reactivate``: paused or gone threads become active again (as `threads add` does);
    without it they are counted as already tracked (discovery never undoes a removal).
    """
    states = tracking_states(session, thread_ids)
    result = Tracking()
    for thread_id in thread_ids:
        state = states.get(thread_id)
        if state is None:
            result.added.append(thread_id)
        elif state != "active" and reactivate:
            result.reactivated.append(thread_id)
        else:
            result.already.append(thread_id)
    start = now or utcnow()
    tracked_table = _insert_ignoring(session, TrackedThread.__table__)  # type: ignore[attr-defined]
    state_table = _insert_ignoring(session, SyncState.__table__)  # type: ignore[attr-defined]
    for offset in range(0, len(result.added), BULK_CHUNK):
        chunk = result.added[offset : offset + BULK_CHUNK]
        rows = [
            {
                "thread_id": thread_id,
                "added_at": start + timedelta(microseconds=offset + n),
                "state": "active",
            }
            for n, thread_id in enumerate(chunk)
        ]
        session.execute(tracked_table, rows)
        session.execute(state_table, [{"thread_id": thread_id} for thread_id in chunk])
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


def active_thread_ids(session: Session) -> list[str]:
    query = select(col(TrackedThread.thread_id)).where(col(TrackedThread.state) == "active")
    return [row[0] for row in session.execute(query.order_by(col(TrackedThread.added_at)))]


def tracked(session: Session, thread_ids: Sequence[str]) -> dict[str, TrackedThread]:
    rows = session.exec(
        select(TrackedThread).where(col(TrackedThread.thread_id).in_(thread_ids))  # type: ignore[call-overload]
    )
    return {row[0].thread_id: row[0] for row in rows}


def state_of(session: Session, thread_id: str) -> SyncState:
    state = session.get(SyncState, thread_id)
    if state is None:
        state = SyncState(thread_id=thread_id)
        session.add(state)
    return state


def mark_gone(session: Session, thread_id: str, now: datetime) -> None:
    row = session.get(TrackedThread, thread_id)
    if row is not None and row.state != "gone":
        row.state, row.gone_at = "gone", now


def get_meta(session: Session, key: str) -> str | None:
    row = session.get(MirrorMeta, key)
    return None if row is None else row.value


def set_meta(session: Session, key: str, value: str) -> None:
    row = session.get(MirrorMeta, key)
    if row is None:
        session.add(MirrorMeta(key=key, value=value))
    else:
        row.value, row.updated_at = value, utcnow()


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
    live = func.sum(func.cast(col(Message.deleted_at).is_(None), type_=Integer))
    counts = {
        row[0]: (row[1] or 0, row[2] - (row[1] or 0), row[3] or 0)
        for row in session.execute(
            select(
                col(Message.thread_id),
                live,
                func.count(),
                func.sum(
                    func.cast(
                        (col(Message.status) == "in_progress") & col(Message.deleted_at).is_(None),
                        type_=Integer,
                    )
                ),
            ).group_by(col(Message.thread_id))
        )
    }
    out = []
    query = (
        select(TrackedThread, SyncState)
        .join(SyncState, col(SyncState.thread_id) == col(TrackedThread.thread_id), isouter=True)
        .order_by(col(TrackedThread.added_at), col(TrackedThread.thread_id))
    )
    for thread, state in session.execute(query):
        live_n, deleted_n, busy_n = counts.get(thread.thread_id, (0, 0, 0))
        out.append(
            ThreadStatus(
                thread_id=thread.thread_id,
                state=thread.state,
                gone_at=thread.gone_at,
                messages=int(live_n),
                deleted=int(deleted_n),
                in_progress=int(busy_n),
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
