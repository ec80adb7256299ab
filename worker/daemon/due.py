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

from sqlalchemy import Integer, Select, and_, func, or_, select, tuple_, update
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
    fenced: bool = False,
) -> list[str]:
    """Lease up to ``limit`` active, unleased, unparked threads and return their ids.

    ``due_only``: threads whose time has come, most overdue first (never-synced ones first of all),
    and threads marked gone whose re-check has come (:func:`reschedule` sets it).
    Otherwise every such thread in id order from ``after`` (exclusive): the reconcile walks the
    whole set in keyset batches this way. See :func:`claim_leases` for ``fenced``.
    """
    return list(
        claim_leases(
            session,
            now=now,
            owner=owner,
            lease=lease,
            limit=limit,
            due_only=due_only,
            after=after,
            fenced=fenced,
        ).epochs
    )


@dataclass(frozen=True)
class Claimed:
    """What one claim took: each thread's new epoch, in claim order, and how many of them were
    taken over from another holder whose lease had expired."""

    epochs: dict[str, int]
    taken_over: int = 0


def claim_leases(
    session: Session,
    *,
    now: datetime,
    owner: str,
    lease: float,
    limit: int,
    due_only: bool = True,
    after: str | None = None,
    fenced: bool = False,
) -> Claimed:
    """:func:`claim`, returning each claimed thread's fencing epoch.

    One statement: ``UPDATE tracked_thread ... FROM (SELECT ... FOR NO KEY UPDATE SKIP LOCKED
    LIMIT n) RETURNING thread_id, lease_epoch`` sets the owner, the lease's expiry and
    ``lease_epoch + 1``. ``fenced`` (replicas mode, PostgreSQL): leases expire by the database's
    ``now()``, never by a replica's own clock; ``now`` still says which threads are due.
    """
    pg = session.get_bind().dialect.name == "postgresql"
    lease_now: Any = func.now() if fenced and pg else now
    expiry: Any = (
        func.now() + func.make_interval(0, 0, 0, 0, 0, 0, lease)
        if fenced and pg
        else now + timedelta(seconds=lease)
    )
    epoch = col(TrackedThread.lease_epoch) + (1 if fenced else 0)
    picked = _claimable(now, lease_now, limit, due_only, after)
    if pg:
        # NO KEY: the claim changes no key, so it does not block sync_state's FK checks.
        picked = picked.with_for_update(of=TrackedThread, skip_locked=True, key_share=True)
    sub = picked.subquery("picked")
    statement = (
        update(TrackedThread)
        .where(col(TrackedThread.thread_id) == sub.c.thread_id)
        .values(lease_owner=owner, lease_until=expiry, lease_epoch=epoch)
        .returning(
            col(TrackedThread.thread_id),
            col(TrackedThread.lease_epoch),
            col(TrackedThread.next_sync_at),
            sub.c.lease_owner,  # the holder before this claim (the subquery's row)
        )
    )
    rows = list(session.execute(statement, execution_options={"synchronize_session": False}))
    # RETURNING comes in no particular order: give the claim's own (most overdue first).
    if due_only:
        rows.sort(key=lambda r: (r[2] is not None, aware(r[2]) or now, r[0]))
    else:
        rows.sort(key=lambda r: r[0])
    taken = sum(r[3] is not None and r[3] != owner for r in rows)
    return Claimed({str(r[0]): int(r[1]) for r in rows}, taken)


def _claimable(
    now: datetime, lease_now: Any, limit: int, due_only: bool, after: str | None
) -> Select[str, str | None]:
    """The threads a claim may take, in the order it takes them, with their current holder."""
    query = (
        select(col(TrackedThread.thread_id), col(TrackedThread.lease_owner))
        .outerjoin(SyncState, col(SyncState.thread_id) == col(TrackedThread.thread_id))
        .where(
            col(TrackedThread.state).in_(("active", "gone") if due_only else ("active",)),
            or_(
                col(TrackedThread.lease_until).is_(None),
                col(TrackedThread.lease_until) <= lease_now,
            ),
            or_(col(SyncState.parked_until).is_(None), col(SyncState.parked_until) <= now),
        )
        .limit(limit)
    )
    if due_only:
        return query.where(
            or_(col(TrackedThread.next_sync_at).is_(None), col(TrackedThread.next_sync_at) <= now)
        ).order_by(
            col(TrackedThread.next_sync_at).asc().nulls_first(), col(TrackedThread.thread_id)
        )
    if after is not None:
        query = query.where(col(TrackedThread.thread_id) > after)
    return query.order_by(col(TrackedThread.thread_id))


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


def release(
    session: Session,
    thread_ids: Iterable[str],
    owner: str,
    epochs: Mapping[str, int] | None = None,
) -> int:
    """Give back leases without touching the schedule: the threads stay as due as they were.

    With ``epochs`` (replicas) only the leases of those very claims: one that another replica
    has taken over since carries a newer epoch and stays its. Returns how many were released.
    """
    ids = list(thread_ids)
    if not ids:
        return 0
    mine = and_(col(TrackedThread.thread_id).in_(ids), col(TrackedThread.lease_owner) == owner)
    if epochs is None:
        result = session.execute(
            update(TrackedThread).where(mine).values(lease_owner=None, lease_until=None)
        )
        return int(getattr(result, "rowcount", 0) or 0)
    pairs = [(t, epochs[t]) for t in ids if t in epochs]
    if not pairs:
        return 0
    result = session.execute(
        update(TrackedThread)
        .where(
            col(TrackedThread.lease_owner) == owner,
            tuple_(col(TrackedThread.thread_id), col(TrackedThread.lease_epoch)).in_(pairs),
        )
        .values(lease_owner=None, lease_until=None)
    )
    return int(getattr(result, "rowcount", 0) or 0)


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
