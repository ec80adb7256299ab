"""A sync run: many threads, bounded concurrency, one record per run and per thread.

The one-shot `threadsync sync` and the daemon's dispatcher both call :func:`sync_threads`. One
thread failing never stops the others: each pass catches its own API errors and reports them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio
from sqlalchemy import select
from sqlmodel import Session, col

from worker.client import ApiClient
from worker.logs import get_logger
from worker.store.db import Mirror
from worker.store.models import Message, SyncRun, SyncRunThread, SyncState, TrackedThread, utcnow
from worker.store.repo import active_thread_ids, tracked
from worker.sync.apply import Counts
from worker.sync.engine import (
    Known,
    ThreadOutcome,
    ThreadPass,
    TieConvention,
    describe,
    unexpected,
)
from worker.sync.memo import CensusAhead, WalkMemo

log = get_logger()

QUEUED_CLOSINGS = 64  # threads' closing states kept waiting for a transaction, at most


def _nothing(_: Session) -> None:
    """A grouped write of its own: it commits whatever is queued with it."""


@dataclass
class RunReport:
    """The outcome of one run, for the CLI summary, the daemon and the metrics."""

    run_id: int
    kind: str
    outcomes: list[ThreadOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes)

    @property
    def counts(self) -> Counts:
        total = Counts()
        for outcome in self.outcomes:
            total += outcome.counts
        return total

    @property
    def requests(self) -> int:
        return sum(o.requests for o in self.outcomes)

    @property
    def failed(self) -> list[ThreadOutcome]:
        return [o for o in self.outcomes if not o.ok]


async def sync_threads(
    client: ApiClient,
    mirror: Mirror,
    *,
    thread_ids: Sequence[str] | None = None,
    full: bool = False,
    concurrency: int = 8,
    page_limit: int = 100,
    now: Callable[[], datetime] = utcnow,
    on_thread_done: Callable[[ThreadOutcome], None] | None = None,
) -> RunReport:
    """Sync ``thread_ids`` (default: every active tracked thread) and record the run."""
    kind = "full" if full else "sync"
    planned = await mirror.run(_plan, mirror, thread_ids, now())
    ids = planned.runnable
    run_id = await mirror.run_write(_open_run, mirror, kind)
    report = RunReport(run_id, kind)
    report.outcomes.extend(planned.skipped)
    ties = TieConvention(mirror)
    await ties.load()
    limiter = anyio.CapacityLimiter(concurrency)
    censuses = CensusAhead(mirror, _memoised(planned, ids, page_limit) if full else [])
    started = time.monotonic()
    log.info("sync.run_started", run=run_id, kind=kind, threads=len(ids))

    async def one(thread_id: str) -> None:
        async with limiter:
            try:
                outcome = await ThreadPass(
                    client,
                    mirror,
                    thread_id,
                    ties=ties,
                    page_limit=page_limit,
                    now=now,
                    known=planned.known.pop(thread_id, None),
                    censuses=censuses,
                ).run(full=full)
            except Exception as exc:  # the pass records its own failures: this is the last net
                outcome = ThreadOutcome(thread_id, "failed", error=unexpected(exc))
            finally:
                censuses.passed(thread_id)
        report.outcomes.append(outcome)
        _log_outcome(outcome)
        if on_thread_done is not None:
            on_thread_done(outcome)
        if mirror.grouped_waiting >= QUEUED_CLOSINGS:
            # Idle passes write nothing else to carry their closing states: a kill loses at
            # most this many threads' counters and backoff, never mirrored messages.
            await mirror.write_grouped(_nothing)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(censuses.run)
            for thread_id in ids:
                tg.start_soon(one, thread_id)
    except BaseException:
        # The passes' closing states are queued, not yet written: commit what can be (shielded,
        # so the threads that finished before a cancellation keep their record), without
        # hiding why the run stopped.
        try:
            await mirror.flush_grouped()
        except Exception as exc:  # the run's own error is the one to raise
            log.warning("sync.closing_states_lost", error=describe(exc))
        raise
    await mirror.flush_grouped()
    report.seconds = time.monotonic() - started
    await mirror.run_write(_close_run, mirror, report, now())
    c = report.counts
    log.info(
        "sync.run_finished",
        run=run_id,
        kind=kind,
        threads_ok=len(report.outcomes) - len(report.failed),
        threads_failed=len(report.failed),
        added=c.added,
        changed=c.changed,
        deleted=c.deleted,
        restored=c.restored,
        requests=report.requests,
        seconds=round(report.seconds, 3),
    )
    return report


@dataclass
class _Planned:
    """What one read at the start of a run found: which threads to pass over and from where."""

    runnable: list[str] = field(default_factory=list)
    skipped: list[ThreadOutcome] = field(default_factory=list)
    # Per runnable thread: its sync state (None before its first pass) and the messages stored
    # as still in progress. A thread is in one run at a time (the daemon's gate and leases), so
    # this read stays true until its pass begins; it saves two queries per thread per pass.
    known: dict[str, Known] = field(default_factory=dict)


_CHUNK = 500  # ids per IN (...) list, far below every backend's limit on bound parameters


def _plan(mirror: Mirror, thread_ids: Sequence[str] | None, now: datetime) -> _Planned:
    """Which threads to sync (parked threads wait until their time), read in one transaction."""
    planned = _Planned()
    with mirror.read() as session:
        ids = list(thread_ids) if thread_ids is not None else active_thread_ids(session)
        threads: dict[str, TrackedThread] = {}
        states: dict[str, SyncState] = {}
        busy: dict[str, set[str]] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            threads.update(tracked(session, chunk))
            for row in session.scalars(
                select(SyncState).where(col(SyncState.thread_id).in_(chunk))
            ):
                states[row.thread_id] = row
            for thread_id, message_id in session.execute(
                select(col(Message.thread_id), col(Message.id)).where(
                    col(Message.thread_id).in_(chunk),
                    col(Message.status) == "in_progress",
                    col(Message.deleted_at).is_(None),
                )
            ):
                busy.setdefault(thread_id, set()).add(message_id)
        for thread_id in ids:
            thread, state = threads.get(thread_id), states.get(thread_id)
            if thread is None:
                planned.skipped.append(
                    ThreadOutcome(
                        thread_id,
                        "failed",
                        error="not tracked; add it with `threadsync threads add`",
                    )
                )
            elif thread.state == "gone":
                planned.skipped.append(
                    ThreadOutcome(thread_id, "gone", error="gone from the server")
                )
            elif (
                state is not None
                and state.parked_until is not None
                and _aware(state.parked_until) > now
            ):
                planned.skipped.append(
                    ThreadOutcome(
                        thread_id,
                        "parked",
                        error=f"parked until {_aware(state.parked_until).isoformat()}",
                    )
                )
            else:
                planned.runnable.append(thread_id)
                planned.known[thread_id] = Known(state, busy.get(thread_id, set()))
    return planned


def _memoised(planned: _Planned, ids: list[str], page_limit: int) -> list[str]:
    """The threads, in run order, whose state holds a walk memo a full pass may replay."""
    out = []
    for thread_id in ids:
        known = planned.known.get(thread_id)
        state = None if known is None else known.state
        if state is None or not state.initial_done:
            continue
        memo = WalkMemo.loads(state.walk_memo)
        if memo is not None and memo.limit == page_limit:
            out.append(thread_id)
    return out


def _aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every datetime threadsync stores is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _open_run(mirror: Mirror, kind: str) -> int:
    with mirror.write() as session:
        run = SyncRun(kind=kind)
        session.add(run)
        session.flush()
        assert run.id is not None
        return run.id


def _close_run(mirror: Mirror, report: RunReport, now: datetime) -> None:
    with mirror.write() as session:
        run = session.get(SyncRun, report.run_id)
        assert run is not None
        c = report.counts
        run.finished_at = now
        run.threads_ok = len(report.outcomes) - len(report.failed)
        run.threads_failed = len(report.failed)
        run.added, run.changed, run.deleted, run.restored = (
            c.added,
            c.changed,
            c.deleted,
            c.restored,
        )
        run.requests = report.requests
        for o in report.outcomes:
            session.add(
                SyncRunThread(
                    run_id=report.run_id,
                    thread_id=o.thread_id,
                    ok=o.ok,
                    error=o.error,
                    added=o.counts.added,
                    changed=o.counts.changed,
                    deleted=o.counts.deleted,
                    restored=o.counts.restored,
                    requests=o.requests,
                )
            )


def _log_outcome(o: ThreadOutcome) -> None:
    fields = {
        "thread": o.thread_id,
        "result": o.result,
        "added": o.counts.added,
        "changed": o.counts.changed,
        "deleted": o.counts.deleted,
        "restored": o.counts.restored,
        "requests": o.requests,
        "rescans": o.rescans,
        "seconds": round(o.seconds, 3),
    }
    if o.ok:
        log.info("sync.thread_done", **fields)
    else:
        log.warning("sync.thread_failed", error=o.error, **fields)
