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
from typing import Any

from sqlalchemy import ColumnElement, Float, Integer, and_, cast, func, or_, select, update
from sqlmodel import Session, col

from worker.daemon.freshness import Freshness, backoff_delay, check_delay, next_interval
from worker.store.models import SyncState, TrackedThread


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
    if failures > 0:
        return backoff_delay(cadence.interval, failures, cadence.jitter, cadence.max_backoff, rand)
    base = cadence.interval
    spread = base * cadence.jitter * (2.0 * rand - 1.0)
    return max(0.0, min(base * (1.0 + cadence.jitter), base + spread))


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every datetime threadsync stores is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


# Candidates looked at per thread claimed (see claim()).
CANDIDATES_PER_SLOT = 4


def claim(
    session: Session,
    *,
    now: datetime,
    owner: str,
    lease: float,
    limit: int,
    due_only: bool = True,
    after: str | None = None,
    default_interval: float = 300.0,
) -> list[str]:
    """Lease up to ``limit`` active, unleased, unparked threads and return their ids.

    ``due_only``: threads whose time has come, most overdue relative to their own interval first
    (``(now - next_sync_at) / check_interval``, never-scheduled ones first of all; a thread never
    checked counts ``default_interval``), and threads marked gone whose re-check has come
    (:func:`reschedule` sets it).
    Otherwise every such thread in id order from ``after`` (exclusive): the reconcile walks the
    whole set in keyset batches this way.
    """
    claimable = (
        col(TrackedThread.state).in_(("active", "gone") if due_only else ("active",)),
        or_(col(TrackedThread.lease_until).is_(None), col(TrackedThread.lease_until) <= now),
    )
    query = (
        select(col(TrackedThread.thread_id))
        .outerjoin(SyncState, col(SyncState.thread_id) == col(TrackedThread.thread_id))
        .where(
            *claimable,
            or_(col(SyncState.parked_until).is_(None), col(SyncState.parked_until) <= now),
        )
        .limit(limit)
    )
    if due_only:
        due = or_(col(TrackedThread.next_sync_at).is_(None), col(TrackedThread.next_sync_at) <= now)
        order = (
            col(TrackedThread.next_sync_at).is_(None).desc(),
            overdue_ratio_sql(session, now, default_interval).desc(),
            col(TrackedThread.thread_id),
        )
        # The order is chosen on tracked_thread alone, over a pool of candidates, and only the
        # pool is joined to sync_state for the parked check: joined first, PostgreSQL hashed the
        # whole of sync_state for every claim (1.4 s with 1M threads and 40,000 due; EXPLAIN in
        # bench/bench_freshness.py). A parked thread is rarely due (its next time is
        # parked_until), so a pool of CANDIDATES_PER_SLOT x limit leaves plenty after the check.
        pool = (
            select(col(TrackedThread.thread_id))
            .where(*claimable, due)
            .order_by(*order)
            .limit(limit * CANDIDATES_PER_SLOT)
        )
        candidates = list(session.execute(pool).scalars())
        if not candidates:
            return []
        # By primary key, in a second statement: as one statement (a join to the pool, or
        # `IN (pool)`), PostgreSQL still chose to scan tracked_thread a second time. The pool is
        # due; the lease condition (re-checked on the locked row) keeps a concurrent claim out.
        # The parked check as a per-row subquery, not the join: a join let PostgreSQL hash all
        # of sync_state again; a scalar subquery is one primary-key probe per candidate.
        parked = (
            select(col(SyncState.parked_until))
            .where(col(SyncState.thread_id) == col(TrackedThread.thread_id))
            .scalar_subquery()
        )
        query = (
            select(col(TrackedThread.thread_id))
            .where(
                *claimable,
                col(TrackedThread.thread_id).in_(candidates),
                func.coalesce(parked, now) <= now,
            )
            .order_by(*order)
            .limit(limit)
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


def epoch_seconds(session: Session, column: Any) -> ColumnElement[float]:
    """A timestamp column as Unix seconds, in the mirror's dialect."""
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.extract("epoch", column), Float)
    # SQLite keeps UTC timestamps as text; julianday() reads them (2440587.5 is the Unix epoch).
    return (func.julianday(column) - 2440587.5) * 86400.0


def overdue_ratio_sql(session: Session, now: datetime, default_interval: float) -> Any:
    """:func:`worker.daemon.freshness.overdue_ratio` as SQL (for the claim's ORDER BY)."""
    late = now.timestamp() - epoch_seconds(session, col(TrackedThread.next_sync_at))
    return late / func.coalesce(col(TrackedThread.check_interval), default_interval)


@dataclass(frozen=True)
class Checked:
    """What the schedule needs from one pass (the dispatcher builds it from the outcome)."""

    changed: bool  # the pass wrote something: messages added, changed, deleted or restored
    ok: bool
    at: datetime  # when the pass ended


def reschedule(
    session: Session,
    finished: Iterable[str],
    *,
    now: datetime,
    cadence: Cadence,
    rand: Mapping[str, float],
    gone_recheck: float = 86400.0,
    freshness: Freshness | None = None,
    checked: Mapping[str, Checked] | None = None,
) -> dict[str, datetime]:
    """Set each finished thread's next time from its failure count and release its lease.

    A parked thread (the server asked for a long wait) is not due before ``parked_until``; a
    thread marked gone comes back for its re-check after ``gone_recheck`` seconds.
    ``rand`` holds one uniform draw per thread (missing ids draw 0.5: no jitter).

    With ``freshness``, each thread's own interval adapts (:mod:`worker.daemon.freshness`) from
    what its pass found (``checked``; a thread missing there counts as an unchanged failure) and
    is stored with the pass's time; without it, ``cadence`` fixes every interval, as before.
    """
    if freshness is not None:
        return _reschedule_adaptive(
            session,
            list(finished),
            now=now,
            freshness=freshness,
            rand=rand,
            gone_recheck=gone_recheck,
            checked=checked or {},
        )
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


def _reschedule_adaptive(
    session: Session,
    ids: list[str],
    *,
    now: datetime,
    freshness: Freshness,
    rand: Mapping[str, float],
    gone_recheck: float,
    checked: Mapping[str, Checked],
) -> dict[str, datetime]:
    if not ids:
        return {}
    rows = session.execute(
        select(
            col(TrackedThread.thread_id),
            col(TrackedThread.state),
            col(TrackedThread.check_interval),
            col(TrackedThread.last_changed_at),
            col(SyncState.consecutive_failures),
            col(SyncState.parked_until),
        )
        .outerjoin(SyncState, col(SyncState.thread_id) == col(TrackedThread.thread_id))
        .where(col(TrackedThread.thread_id).in_(ids))
    ).all()
    plan: dict[str, datetime] = {}
    updates: list[dict[str, Any]] = []
    for thread_id, state, interval, last_changed, failures, parked_until in rows:
        seen = checked.get(thread_id)
        changed, ok = (seen.changed, seen.ok) if seen is not None else (False, False)
        at = seen.at if seen is not None else now
        since = aware(last_changed)
        idle_for = None if since is None else (at - since).total_seconds()
        new_interval = next_interval(freshness, interval, changed=changed, ok=ok, idle_for=idle_for)
        delay = check_delay(freshness, new_interval, failures or 0, rand.get(thread_id, 0.5))
        due = at + timedelta(seconds=delay)
        if state == "gone":
            due = now + timedelta(seconds=gone_recheck)
        parked = aware(parked_until)
        if parked is not None and parked > due:
            due = parked
        plan[thread_id] = due
        row: dict[str, Any] = {
            "thread_id": thread_id,
            "next_sync_at": due,
            "check_interval": new_interval,
            "lease_owner": None,
            "lease_until": None,
        }
        if ok:
            row["last_checked_at"] = at
        if changed:
            row["last_changed_at"] = at
        updates.append(row)
    _bulk_update(session, updates)
    return plan


def _bulk_update(session: Session, rows: list[dict[str, Any]]) -> None:
    """One executemany per set of keys (an ORM bulk update needs the same keys in every row)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row)), []).append(row)
    for group in groups.values():
        session.execute(update(TrackedThread), group)


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
