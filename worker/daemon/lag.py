"""The freshness lag: how stale the recently active threads are (``/metrics`` and ``status``).

A thread is recently active when a pass found a change in it within the last hour
(``tracked_thread.last_changed_at``, indexed); its staleness is the time since its last successful
check (``last_checked_at``). Only those threads are counted: an idle thread checked once a day is
stale by design, and a million of them would hide what the user cares about.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from worker.daemon.due import aware
from worker.daemon.freshness import Lag, lag_of
from worker.store.models import TrackedThread

RECENT = timedelta(hours=1)


def recent_lag(session: Session, now: datetime, window: timedelta = RECENT) -> Lag:
    """Staleness percentiles of the active threads changed within ``window`` of ``now``."""
    query = select(col(TrackedThread.last_checked_at)).where(
        col(TrackedThread.state) == "active",
        col(TrackedThread.last_changed_at) >= now - window,
    )
    staleness = []
    for checked in session.exec(query):
        at = aware(checked)
        if at is not None:
            staleness.append(max(0.0, (now - at).total_seconds()))
    return lag_of(staleness)


def thread_schedules(session: Session) -> dict[str, tuple[float | None, datetime | None]]:
    """Per thread: its check interval and when a pass last found a change (for ``status``)."""
    query = select(
        col(TrackedThread.thread_id),
        col(TrackedThread.check_interval),
        col(TrackedThread.last_changed_at),
    )
    return {t: (interval, aware(changed)) for t, interval, changed in session.exec(query)}


def describe_lag(lag: Lag) -> str:
    """The one line ``threadsync status`` prints."""
    if not lag.threads:
        return "freshness: no thread changed in the last hour"
    noun = "thread" if lag.threads == 1 else "threads"
    return (
        f"freshness: {lag.threads:,} {noun} changed in the last hour; since their last check:"
        f" p50 {lag.p50:.0f}s, p99 {lag.p99:.0f}s, max {lag.max:.0f}s"
    )


def lag_fields(lag: Lag) -> dict[str, float | int]:
    """``status --lag --json``: the same figures, as one object."""
    return {
        "recently_changed_threads": lag.threads,
        "staleness_p50_seconds": round(lag.p50, 3),
        "staleness_p99_seconds": round(lag.p99, 3),
        "staleness_max_seconds": round(lag.max, 3),
    }
