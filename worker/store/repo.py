"""Queries on tracked threads, sync state and mirror facts (all but the page hot path)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Integer, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
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
