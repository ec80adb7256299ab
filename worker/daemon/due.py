"""Which threads are due, who holds them, and when each is next due.

The schedule lives in our own table, not in APScheduler: ``tracked_thread.next_sync_at`` (NULL means
due now, so a thread never synced, or just added with `threadsync threads add`, is picked up by the
next dispatch) and ``sync_state.consecutive_failures`` / ``parked_until`` (kept by the sync engine).

Claiming a batch sets a lease (``lease_owner``, ``lease_until``, and in replicas mode a new
``lease_epoch``) in the one statement that selects it (:func:`claim_leases`), most overdue
relative to each thread's own interval first (:mod:`worker.daemon.freshness`). With one daemon per
mirror the lease only keeps the reconcile and the dispatcher from passing over the same thread at
once; several daemons sharing a PostgreSQL mirror rely on its ``FOR NO KEY UPDATE SKIP LOCKED``
(plain on SQLite: one writer anyway).

Every statement here is on ``tracked_thread`` (the schedule and the leases). The claim and the
counts read ``sync_state.parked_until`` / ``consecutive_failures`` inside the same statement (a
claim must be one statement); a read of ``sync_state`` alone goes through
:mod:`worker.store.sync_state`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    Select,
    and_,
    bindparam,
    cast,
    func,
    or_,
    select,
    tuple_,
    update,
)
from sqlmodel import Session, col

from worker.daemon.freshness import (
    Freshness,
    backoff_delay,
    check_delay,
    next_interval,
    overdue_ratio,
)
from worker.store import sync_state
from worker.store.messages import among
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


# Candidates looked at per thread claimed (see claim_leases()).
CANDIDATES_PER_SLOT = 4


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
    default_interval: float = 300.0,
) -> Claimed:
    """Lease up to ``limit`` active, unleased, unparked threads; their ids (in claim order) and
    fencing epochs are the result's ``epochs``.

    ``due_only``: threads whose time has come, most overdue relative to their own interval first
    (``(now - next_sync_at) / check_interval``, never-scheduled ones first of all; a thread never
    checked counts ``default_interval``), and threads marked gone whose re-check has come
    (:func:`reschedule` sets it). Otherwise every such thread in id order from ``after``
    (exclusive): the reconcile walks the whole set in keyset batches this way.

    One statement, in both daemon modes: ``UPDATE tracked_thread ... FROM (SELECT ... FOR NO KEY
    UPDATE SKIP LOCKED LIMIT n) RETURNING thread_id, lease_epoch`` sets the owner, the lease's
    expiry and ``lease_epoch + 1``. ``fenced`` (replicas mode, PostgreSQL): leases expire by the
    database's ``now()``, never by a replica's own clock; ``now`` still says which threads are due
    and how overdue. The due order comes from a candidate pool inside the same statement
    (:func:`_due_pick`).
    """
    pg = session.get_bind().dialect.name == "postgresql"
    lease_now: Any = func.now() if fenced and pg else now
    expiry: Any = (
        func.now() + func.make_interval(0, 0, 0, 0, 0, 0, lease)
        if fenced and pg
        else now + timedelta(seconds=lease)
    )
    epoch = col(TrackedThread.lease_epoch) + (1 if fenced else 0)
    if due_only:
        picked = _due_pick(session, now, lease_now, limit, default_interval)
    else:
        picked = _walk_pick(now, lease_now, limit, after)
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
            sub.c.lease_owner,  # the holder before this claim (the subquery's row; PostgreSQL)
            col(TrackedThread.next_sync_at),
            col(TrackedThread.check_interval),
        )
    )
    # Core, on the session's connection: the ORM's UPDATE handling (it would synchronise
    # loaded objects; none are) cost more of the worker thread than the statement's own work.
    rows = list(session.connection().execute(statement))
    # RETURNING comes in no particular order: give the claim's own (never scheduled first, then
    # most overdue relative to the interval; the reconcile's walk: by id).
    if due_only:
        at = now.timestamp()

        def overdue(r: Any) -> tuple[bool, float, str]:
            due_at = aware(r[3])
            ratio = overdue_ratio(at, due_at.timestamp(), r[4] or default_interval) if due_at else 0
            return (due_at is not None, -ratio, r[0])

        rows.sort(key=overdue)
    else:
        rows.sort(key=lambda r: r[0])
    taken = sum(r[2] is not None and r[2] != owner for r in rows)
    return Claimed({str(r[0]): int(r[1]) for r in rows}, taken)


def _claimable(table: Any, lease_now: Any, due_only: bool) -> tuple[Any, ...]:
    """Active (or gone, for its re-check) and not leased: what any claim may take."""
    return (
        table.c.state.in_(("active", "gone") if due_only else ("active",)),
        or_(table.c.lease_until.is_(None), table.c.lease_until <= lease_now),
    )


def _due_order(session: Session, table: Any, now: datetime, default_interval: float) -> Any:
    """Never scheduled first, then the most overdue relative to the thread's own interval."""
    return (
        table.c.next_sync_at.is_(None).desc(),
        overdue_ratio_sql(session, now, default_interval, table).desc(),
        table.c.thread_id,
    )


def _due_pick(
    session: Session, now: datetime, lease_now: Any, limit: int, default_interval: float
) -> Select[Any]:
    """The due threads a claim takes, most overdue first: the claim's ``FROM`` subquery.

    A candidate pool of CANDIDATES_PER_SLOT x ``limit`` is ordered on tracked_thread alone and
    only the pool is checked against sync_state (parked) and locked: joined first, PostgreSQL
    hashed the whole of sync_state for every claim (1.4 s with 1M threads and 40,000 due; EXPLAIN
    in bench/bench_freshness.py). On PostgreSQL the pool is ``= ANY(ARRAY(pool))``, an init plan
    run once whose ids are then fetched by primary key: as a join or ``IN (pool)`` the planner
    scanned tracked_thread a second time. A parked thread is rarely due (its next time is
    parked_until), so the pool leaves plenty after the check; a concurrent claim's locked rows are
    skipped (SKIP LOCKED) and its committed ones fail the lease condition, re-checked on the row.
    """
    threads = TrackedThread.__table__  # type: ignore[attr-defined]
    pool_rows = threads.alias("pool")
    due = or_(pool_rows.c.next_sync_at.is_(None), pool_rows.c.next_sync_at <= now)
    pool = (
        select(pool_rows.c.thread_id)
        .where(*_claimable(pool_rows, lease_now, True), due)
        .order_by(*_due_order(session, pool_rows, now, default_interval))
        .limit(limit * CANDIDATES_PER_SLOT)
        .scalar_subquery()
    )
    if session.get_bind().dialect.name == "postgresql":
        in_pool = threads.c.thread_id == func.any(func.array(pool))
    else:
        in_pool = threads.c.thread_id.in_(pool)
    # The parked check as a per-row subquery, not a join: a join let PostgreSQL hash all of
    # sync_state again; a scalar subquery is one primary-key probe per candidate.
    parked = (
        select(col(SyncState.parked_until))
        .where(col(SyncState.thread_id) == threads.c.thread_id)
        .scalar_subquery()
    )
    return (
        select(
            threads.c.thread_id,
            threads.c.lease_owner,
        )
        .where(*_claimable(threads, lease_now, True), in_pool, func.coalesce(parked, now) <= now)
        .order_by(*_due_order(session, threads, now, default_interval))
        .limit(limit)
    )


def _walk_pick(now: datetime, lease_now: Any, limit: int, after: str | None) -> Select[Any]:
    """The reconcile's keyset walk: every active, unleased, unparked thread by id from ``after``."""
    threads = TrackedThread.__table__  # type: ignore[attr-defined]
    query = (
        select(
            threads.c.thread_id,
            threads.c.lease_owner,
        )
        .outerjoin(SyncState, col(SyncState.thread_id) == threads.c.thread_id)
        .where(
            *_claimable(threads, lease_now, False),
            or_(col(SyncState.parked_until).is_(None), col(SyncState.parked_until) <= now),
        )
        .order_by(threads.c.thread_id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(threads.c.thread_id > after)
    return query


def epoch_seconds(session: Session, column: Any) -> ColumnElement[float]:
    """A timestamp column as Unix seconds, in the mirror's dialect."""
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.extract("epoch", column), Float)
    # SQLite keeps UTC timestamps as text; julianday() reads them (2440587.5 is the Unix epoch).
    return (func.julianday(column) - 2440587.5) * 86400.0


def overdue_ratio_sql(
    session: Session, now: datetime, default_interval: float, table: Any = None
) -> Any:
    """:func:`worker.daemon.freshness.overdue_ratio` as SQL (for the claim's ORDER BY), over
    ``table`` (tracked_thread or an alias of it)."""
    rows = TrackedThread.__table__ if table is None else table  # type: ignore[attr-defined]
    late = now.timestamp() - epoch_seconds(session, rows.c.next_sync_at)
    return late / func.coalesce(rows.c.check_interval, default_interval)


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
        thread_id: (failures, aware(parked))
        for thread_id, (failures, parked) in sync_state.backoff_of(session, ids).items()
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
    _bulk_update(
        session,
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
    query = (
        select(
            col(TrackedThread.thread_id),
            col(TrackedThread.state),
            col(TrackedThread.check_interval),
            col(TrackedThread.last_changed_at),
            col(SyncState.consecutive_failures),
            col(SyncState.parked_until),
        )
        .outerjoin(SyncState, col(SyncState.thread_id) == col(TrackedThread.thread_id))
        .where(among(session, col(TrackedThread.thread_id), ids))
    )
    rows = session.connection().execute(query).all()
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
    """``UPDATE tracked_thread`` by ``thread_id``, one executemany per set of keys (psycopg
    sends each as one pipeline). Core, not the ORM's bulk update by primary key: that cost
    the settle about 20 ms of a worker thread per batch for its bookkeeping alone."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row)), []).append(row)
    threads = TrackedThread.__table__  # type: ignore[attr-defined]
    conn = session.connection()
    for keys, group in groups.items():
        statement = (
            update(threads)
            .where(threads.c.thread_id == bindparam("_thread"))
            .values({key: bindparam(key) for key in keys if key != "thread_id"})
        )
        conn.execute(statement, [{**row, "_thread": row["thread_id"]} for row in group])


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
        result = session.connection().execute(
            update(TrackedThread).where(mine).values(lease_owner=None, lease_until=None)
        )
        return int(getattr(result, "rowcount", 0) or 0)
    pairs = [(t, epochs[t]) for t in ids if t in epochs]
    if not pairs:
        return 0
    result = session.connection().execute(
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
    more consecutive failures) and ``never_synced`` are subsets of ``active``. One statement
    (one snapshot; the subsets from the ``active`` group): it reads every row of both tables, so
    the daemon reads it rarely on a large mirror (``worker.daemon.metrics.Refresh``).
    """

    def flag(condition: ColumnElement[bool]) -> Any:
        return func.sum(func.cast(condition, Integer))

    out = dict.fromkeys(THREAD_STATES, 0)
    query = (
        select(
            col(TrackedThread.state),
            func.count(),
            flag(and_(col(SyncState.parked_until).is_not(None), col(SyncState.parked_until) > now)),
            flag(col(SyncState.consecutive_failures) > 0),
            flag(col(SyncState.last_sync_at).is_(None)),
        )
        .select_from(TrackedThread)
        .outerjoin(SyncState, col(SyncState.thread_id) == col(TrackedThread.thread_id))
        .group_by(col(TrackedThread.state))
    )
    for state, n, parked, failing, never in session.execute(query):
        if state in out:
            out[state] = int(n)
        if state == "active":
            out["parked"], out["failing"], out["never_synced"] = (
                int(v or 0) for v in (parked, failing, never)
            )
    return out
