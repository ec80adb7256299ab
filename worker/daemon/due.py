"""Which threads are due, who holds them, and when each is next due.

The schedule lives in our own table, not in APScheduler: ``tracked_thread.next_sync_at`` (NULL means
due now, so a thread never synced, or just added with `threadsync threads add`, is picked up by the
next dispatch) and ``sync_state.consecutive_failures`` / ``parked_until`` (kept by the sync engine).

Claiming a batch sets a lease (``lease_owner``, ``lease_until``) in the same transaction that
selects it. With one daemon per mirror the lease only keeps the reconcile and the dispatcher from
passing over the same thread at once, but the query is already the shape several daemons sharing a
PostgreSQL mirror need: ``... FOR UPDATE SKIP LOCKED`` there, plain on SQLite (one writer anyway).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Integer, and_, func, or_, select, update
from sqlmodel import Session, col

from worker.store.models import SyncState, TrackedThread

# Failures beyond this many double no further (2**20 intervals is past any sane max_backoff).
_MAX_DOUBLINGS = 20


@dataclass(frozen=True)
class Cadence:
    """How often a thread is synced and how failures push it back."""

    interval: float
    jitter: float
    max_backoff: float


def next_delay(cadence: Cadence, failures: int, rand: float) -> float:
    """Seconds until a thread is due again; ``rand`` is uniform in [0, 1).

    A healthy thread comes back after ``interval * (1 +- jitter)``: the jitter spreads threads added
    together so they do not stay in lockstep. Each consecutive failure doubles the base up to
    ``max_backoff`` (never below the interval itself); the jitter applies after the cap so a crowd
    of failing threads is spread too, and the result never exceeds the cap.
    """
    base = cadence.interval
    ceiling = max(cadence.max_backoff, cadence.interval)
    if failures > 0:
        base = min(ceiling, cadence.interval * 2 ** min(failures, _MAX_DOUBLINGS))
    spread = base * cadence.jitter * (2.0 * rand - 1.0)
    limit = ceiling if failures > 0 else base * (1.0 + cadence.jitter)
    return max(0.0, min(limit, base + spread))


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every datetime threadsync stores is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def claim(
    session: Session,
    *,
    now: datetime,
    owner: str,
    lease: float,
    limit: int,
    due_only: bool = True,
    after: str | None = None,
) -> list[str]:
    """Lease up to ``limit`` active, unleased, unparked threads and return their ids.

    ``due_only``: threads whose time has come, most overdue first (never-synced ones first of all),
    and threads marked gone whose re-check has come (:func:`reschedule` sets it).
    Otherwise every such thread in id order from ``after`` (exclusive): the reconcile walks the
    whole set in keyset batches this way.
    """
    query = (
        select(col(TrackedThread.thread_id))
        .outerjoin(SyncState, col(SyncState.thread_id) == col(TrackedThread.thread_id))
        .where(
            col(TrackedThread.state).in_(("active", "gone") if due_only else ("active",)),
            or_(col(TrackedThread.lease_until).is_(None), col(TrackedThread.lease_until) <= now),
            or_(col(SyncState.parked_until).is_(None), col(SyncState.parked_until) <= now),
        )
        .limit(limit)
    )
    if due_only:
        query = query.where(
            or_(col(TrackedThread.next_sync_at).is_(None), col(TrackedThread.next_sync_at) <= now)
        ).order_by(
            col(TrackedThread.next_sync_at).asc().nulls_first(), col(TrackedThread.thread_id)
        )
    else:
        if after is not None:
            query = query.where(col(TrackedThread.thread_id) > after)
        query = query.order_by(col(TrackedThread.thread_id))
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(of=TrackedThread, skip_locked=True)
    ids = [row[0] for row in session.execute(query)]
    if ids:
        session.execute(
            update(TrackedThread)
            .where(col(TrackedThread.thread_id).in_(ids))
            .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease))
        )
    return ids


def reschedule(
    session: Session,
    finished: Iterable[str],
    *,
    now: datetime,
    cadence: Cadence,
    rand: Mapping[str, float],
    gone_recheck: float = 86400.0,
) -> dict[str, datetime]:
    """Set each finished thread's next time from its failure count and release its lease.

    A parked thread (the server asked for a long wait) is not due before ``parked_until``; a
    thread marked gone comes back for its re-check after ``gone_recheck`` seconds.
    ``rand`` holds one uniform draw per thread (missing ids draw 0.5: no jitter).
    """
    ids = list(finished)
    if not ids:
        return {}
    states = {
        row[0]: (row[1], aware(row[2]))
        for row in session.execute(
            select(
                col(SyncState.thread_id),
                col(SyncState.consecutive_failures),
                col(SyncState.parked_until),
            ).where(col(SyncState.thread_id).in_(ids))
        )
    }
    gone = set(
        session.execute(
            select(col(TrackedThread.thread_id)).where(
                col(TrackedThread.thread_id).in_(ids), col(TrackedThread.state) == "gone"
            )
        ).scalars()
    )
    plan: dict[str, datetime] = {}
    for thread_id in ids:
        failures, parked_until = states.get(thread_id, (0, None))
        due = now + timedelta(seconds=next_delay(cadence, failures, rand.get(thread_id, 0.5)))
        if thread_id in gone:
            due = now + timedelta(seconds=gone_recheck)
        if parked_until is not None and parked_until > due:
            due = parked_until
        plan[thread_id] = due
    session.execute(
        update(TrackedThread),
        [
            {"thread_id": t, "next_sync_at": due, "lease_owner": None, "lease_until": None}
            for t, due in plan.items()
        ],
    )
    return plan


def release(session: Session, thread_ids: Iterable[str], owner: str) -> None:
    """Give back leases without touching the schedule: the threads stay as due as they were."""
    ids = list(thread_ids)
    if ids:
        session.execute(
            update(TrackedThread)
            .where(col(TrackedThread.thread_id).in_(ids), col(TrackedThread.lease_owner) == owner)
            .values(lease_owner=None, lease_until=None)
        )


def clear_leases(session: Session) -> int:
    """Drop every lease: called by a daemon that holds the one-daemon lock, after a crash."""
    result = session.execute(
        update(TrackedThread)
        .where(col(TrackedThread.lease_owner).is_not(None))
        .values(lease_owner=None, lease_until=None)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def due_count(session: Session, now: datetime) -> int:
    """Active threads whose time has come (parked ones excluded): the dispatcher's backlog."""
    query = (
        select(func.count())
        .select_from(TrackedThread)
        .outerjoin(SyncState, col(SyncState.thread_id) == col(TrackedThread.thread_id))
        .where(
            col(TrackedThread.state) == "active",
            or_(col(TrackedThread.next_sync_at).is_(None), col(TrackedThread.next_sync_at) <= now),
            or_(col(SyncState.parked_until).is_(None), col(SyncState.parked_until) <= now),
        )
    )
    return int(session.execute(query).scalar_one())


THREAD_STATES = ("active", "paused", "gone", "parked", "failing", "never_synced")


def threads_by_state(session: Session, now: datetime) -> dict[str, int]:
    """Counts for the ``threadsync_threads`` gauge; a fixed set of labels (bounded cardinality).

    ``active``/``paused``/``gone`` partition the tracked threads; ``parked``, ``failing`` (one or
    more consecutive failures) and ``never_synced`` are subsets of ``active``.
    """
    out = dict.fromkeys(THREAD_STATES, 0)
    for state, n in session.execute(
        select(col(TrackedThread.state), func.count()).group_by(col(TrackedThread.state))
    ):
        if state in out:
            out[state] = int(n)
    active = col(TrackedThread.state) == "active"
    row = session.execute(
        select(
            func.sum(
                func.cast(
                    and_(
                        col(SyncState.parked_until).is_not(None), col(SyncState.parked_until) > now
                    ),
                    Integer,
                )
            ),
            func.sum(func.cast(col(SyncState.consecutive_failures) > 0, Integer)),
            func.sum(func.cast(col(SyncState.last_sync_at).is_(None), Integer)),
        )
        .select_from(TrackedThread)
        .outerjoin(SyncState, col(SyncState.thread_id) == col(TrackedThread.thread_id))
        .where(active)
    ).one()
    out["parked"], out["failing"], out["never_synced"] = (int(v or 0) for v in row)
    return out
