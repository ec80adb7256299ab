"""Reading the run history (``sync_run``, ``sync_run_thread``) for ``threadsync runs``.

The runner writes these tables (:mod:`worker.sync.runner`); the daemon prunes them after
``daemon.run_history_days``. A run recorded before schema 0009 has no ``outcome``: it is derived
here from what the row holds.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlmodel import Session, col

from worker.store.models import SyncRun, SyncRunThread


def outcome_of(run: SyncRun) -> str:
    """ok | failed | interrupted | running; older rows lack the column and are judged here."""
    if run.outcome is not None:
        return run.outcome
    if run.finished_at is None:
        return "running"
    return "failed" if run.threads_failed else "ok"


def recent_runs(session: Session, limit: int) -> list[SyncRun]:
    """The newest ``limit`` runs, newest first."""
    query = select(SyncRun).order_by(col(SyncRun.id).desc()).limit(limit)
    return list(session.scalars(query))


def run_threads(session: Session, run_id: int) -> tuple[SyncRun | None, list[SyncRunThread]]:
    """One run and what it did to each thread (failed threads first, then by id)."""
    run = session.get(SyncRun, run_id)
    if run is None:
        return None, []
    rows = session.scalars(
        select(SyncRunThread)
        .where(col(SyncRunThread.run_id) == run_id)
        .order_by(col(SyncRunThread.ok), col(SyncRunThread.thread_id))
    )
    return run, list(rows)
