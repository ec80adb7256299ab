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
