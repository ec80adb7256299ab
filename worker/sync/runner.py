"""A sync run: many threads, bounded concurrency, one record per run and per thread.

The one-shot `threadsync sync` and the daemon's dispatcher both call :func:`sync_threads`. One
thread failing never stops the others: each pass catches its own API errors and reports them.
A run given a deadline starts no pass after it and stops the passes still running at it (their
committed pages stay; a page being written commits first, see :meth:`Mirror.run_write`).

Two kinds of answer are about the run, not the thread, and the run decides them:

- an answer no other thread can do better with (401/403, no connection on any attempt, an error
  naming the path or the api-version) stops the run at once: no new pass starts, and
  :class:`MisconfiguredError` names the setting to check;
- a 404 is a thread gone only when the service is otherwise answering: some request of this run
  (or one probe of another tracked thread) got a 2xx. A 404 whose body says the thread does not
  exist is then confirmed; a generic one ("Resource not found", no body) needs a second 404 on a
  later pass. When no request was answered at all, every 404 points at the configuration (a
  wrong endpoint, api-version or profile): nothing is marked and the run stops the same way.

A thread marked gone is re-checked every ``gone_recheck`` seconds and resumes by itself when it
answers again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio
from sqlalchemy import Table, insert, update
from sqlmodel import Session

from worker.client import ApiClient, profiles
from worker.config import format_duration
from worker.errors import ApiError, MisconfiguredError
from worker.logs import get_logger
from worker.store import messages, sync_state
from worker.store.db import Mirror
from worker.store.models import SyncRun, SyncRunThread, SyncState, TrackedThread, utcnow
from worker.store.repo import Standing, active_thread_ids, mark_gone, standings
from worker.sync.memo import CensusAhead, WalkMemo
from worker.sync.outcome import ThreadOutcome, cause_of, describe, unexpected
from worker.sync.plan import Counts
from worker.sync.thread_pass import Known, ThreadPass
from worker.sync.ties import TieConvention
from worker.sync.writer import Lease

log = get_logger()

QUEUED_CLOSINGS = 64  # threads' closing states kept waiting for a transaction, at most
GONE_RECHECK = 86400.0  # seconds between two looks at a gone thread (sync.gone_recheck_interval)
EARLY_404S = 8  # 404s with nothing answered after which a run asks whether the service answers
PROBES = 2  # other threads asked, at most, whether the service answers when no request of a run did
NOT_FOUND_KIND = "not_found"  # sync_state.last_error_kind of a 404 waiting for its confirmation


def _nothing(_: Session) -> None:
    """A grouped write of its own: it commits whatever is queued with it."""


@dataclass
class RunReport:
    """The outcome of one run, for the CLI summary, the daemon and the metrics."""

    run_id: int
    kind: str
    outcomes: list[ThreadOutcome] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    saved: int = 0  # of an interrupted run: messages stored before it stopped
    probes: int = 0  # requests asking another thread whether the service answers (see _probe)

    @property
    def ok(self) -> bool:
        """Every thread synced, but for threads already known gone (a new gone is news)."""
        return all(o.ok or (o.result == "gone" and o.was_gone) for o in self.outcomes)

    @property
    def gone(self) -> list[ThreadOutcome]:
        return [o for o in self.outcomes if o.result == "gone"]

    @property
    def counts(self) -> Counts:
        total = Counts()
        for outcome in self.outcomes:
            total += outcome.counts
        return total

    @property
    def requests(self) -> int:
        return sum(o.requests for o in self.outcomes) + self.probes

    @property
    def failed(self) -> list[ThreadOutcome]:
        return [o for o in self.outcomes if not o.ok and o.result != "gone"]


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
    on_run_started: Callable[[RunReport, int], None] | None = None,
    deadline: float | None = None,
    gone_recheck: float = GONE_RECHECK,
    fence: Lease | None = None,
    limiter: anyio.CapacityLimiter | None = None,
) -> RunReport:
    """Sync ``thread_ids`` (default: every active tracked thread, and the gone ones due for a
    re-check) and record the run. Raises :class:`MisconfiguredError`, having marked nothing, when
    the answers point at the configuration (see the module's docstring).

    ``fence``: replicas mode, the leases the dispatcher claimed these threads under; every write
    of a pass checks its lease (see ``worker/daemon/fence.py``).

    ``limiter``: the slots the passes take, shared with other runs going on at the same time (the
    daemon's lanes), so that all of them together run at most its total at once; default: a
    limiter of ``concurrency`` of the run's own.

    ``deadline``: seconds the run may take from here. Threads not begun by then are reported
    ``not reached``, passes still running are stopped and reported ``stopped``; both count as
    work left (the report is not ok).
    """
    stop_at = math.inf if deadline is None else anyio.current_time() + deadline
    kind = "full" if full else "sync"
    planned = await mirror.run(_plan, mirror, thread_ids, now(), gone_recheck)
    ids = planned.runnable
    run_id = await mirror.run_write(_open_run, mirror, kind)
    report = RunReport(run_id, kind)
    report.outcomes.extend(planned.skipped)
    ties = TieConvention(mirror)
    await ties.load()
    if limiter is None:
        limiter = anyio.CapacityLimiter(concurrency)
    censuses = CensusAhead(mirror, _memoised(planned, ids, page_limit) if full else [])
    started = time.monotonic()
    log.debug("sync.run_started", run=run_id, kind=kind, threads=len(ids))
    if on_run_started is not None:
        on_run_started(report, len(ids))

    watch = _Watch(
        client, mirror, report, early=min(len(ids), max(concurrency, EARLY_404S)), total=len(ids)
    )

    async def one(thread_id: str) -> ThreadOutcome | None:
        """One thread's pass, run under a slot of ``limiter`` its worker holds; None when the
        run stopped before it (or it stopped the run)."""
        if watch.stop is not None:
            censuses.passed(thread_id)
            return None  # passes already under way finish; no new one starts
        try:
            known = planned.known.pop(thread_id, None)
            if anyio.current_time() >= stop_at:
                outcome = not_reached(thread_id, deadline)
            else:
                one_pass = ThreadPass(
                    client,
                    mirror,
                    thread_id,
                    ties=ties,
                    page_limit=page_limit,
                    now=now,
                    known=known,
                    censuses=censuses,
                    lease=fence,
                )
                outcome = await run_until(one_pass, full, stop_at, deadline)
        except Exception as exc:  # the pass records its own failures: this is the last net
            outcome = ThreadOutcome(thread_id, "failed", error=unexpected(exc))
        finally:
            censuses.passed(thread_id)
        outcome.was_gone = thread_id in planned.rechecks
        # Judged before the next pass begins, so a stop holds the very next pass.
        if not await watch.saw(outcome):
            return None
        return outcome

    def done(outcome: ThreadOutcome) -> None:
        report.outcomes.append(outcome)
        _log_outcome(outcome)
        if on_thread_done is not None and outcome.result != "missing":
            on_thread_done(outcome)  # a 404's outcome is reported once the run has decided it

    queue = iter(ids)
    closing = False  # a commit of the queued closing states is under way

    async def close_queued() -> None:
        """Idle passes write nothing else to carry their closing states: a kill loses at most
        ``QUEUED_CLOSINGS`` threads' counters and backoff, never mirrored messages. Run beside
        the passes, one at a time: no slot waits on the commit."""
        nonlocal closing
        try:
            await mirror.write_grouped(_nothing)
        finally:
            closing = False

    async def worker() -> None:
        """Passes over the run's threads, in order, one at a time, under one slot of
        ``limiter`` held until no thread of the run is left to begin.

        A task per thread, each queueing for a slot, cost each pass a task, the slot's
        checkpoint and its wake-up (~20 us of the event loop a pass). The slot is kept from one
        pass to the next as the slot a finished pass gave back went to the next queued pass of
        the same run: another run sharing ``limiter`` (the daemon's other lane) still gets slots
        only as this one runs out of threads to begin.
        """
        nonlocal closing
        async with limiter:
            for thread_id in queue:
                outcome = await one(thread_id)
                if outcome is None:
                    continue
                done(outcome)
                if mirror.grouped_waiting >= QUEUED_CLOSINGS and not closing:
                    closing = True
                    tg.start_soon(close_queued)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(censuses.run)
            slots = limiter.total_tokens  # as many passes at once as tasks per thread had
            for _ in range(len(ids) if slots == math.inf else min(len(ids), max(1, int(slots)))):
                tg.start_soon(worker)
    except BaseException:
        # The passes' closing states are queued, not yet written: commit what can be (shielded,
        # so the threads that finished before a cancellation keep their record), without
        # hiding why the run stopped.
        try:
            await mirror.flush_grouped()
        except Exception as exc:  # the run's own error is the one to raise
            log.warning("sync.closing_states_lost", error=describe(exc))
        await _record_interrupted(mirror, report, started, now())
        raise
    await mirror.flush_grouped()
    if watch.stop is not None:
        await mirror.run_write(_close_run, mirror, report, now())
        raise watch.stop
    await _judge_missing(client, mirror, report, now(), proven=watch.proven, fence=fence)
    if on_thread_done is not None:
        for outcome in report.outcomes:
            if outcome.not_found is not None:
                on_thread_done(outcome)
    report.seconds = time.monotonic() - started
    await mirror.run_write(_close_run, mirror, report, now())
    c = report.counts
    # A run that changed nothing and failed nowhere is the daemon's steady state: debug only.
    speak = log.info if c.writes or report.failed else log.debug
    speak(
        "sync.run_finished",
        run=run_id,
        kind=kind,
        threads_ok=sum(o.ok for o in report.outcomes),
        threads_failed=len(report.failed),
        threads_gone=len(report.gone),
        added=c.added,
        changed=c.changed,
        deleted=c.deleted,
        restored=c.restored,
        requests=report.requests,
        seconds=round(report.seconds, 3),
    )
    return report


async def _record_interrupted(
    mirror: Mirror, report: RunReport, started: float, when: datetime
) -> None:
    """A run stopped by a signal or a crash is closed as interrupted, not left open forever.

    Shielded: the cancellation that stopped the run must not stop its record. The pages each
    pass committed stay; ``report.saved`` counts the messages they added.
    """
    report.seconds = time.monotonic() - started
    report.interrupted = True
    with anyio.CancelScope(shield=True):
        try:
            report.saved = await mirror.run(_saved_since, mirror, report.run_id)
            await mirror.run_write(_close_run, mirror, report, when)
        except Exception as exc:  # never hide why the run stopped
            log.warning("sync.run_record_lost", run=report.run_id, error=describe(exc))
    log.warning("sync.run_interrupted", run=report.run_id, saved=report.saved)


def _saved_since(mirror: Mirror, run_id: int) -> int:
    """Messages first stored since the run began (by it, or by a process beside it)."""
    with mirror.read() as session:
        run = session.get(SyncRun, run_id)
        if run is None:
            return 0
        return messages.first_seen_since(session, run.started_at)


# -- the run's deadline -----------------------------------------------------------------------

NOT_REACHED = "not reached"
STOPPED = "cut short"  # by the deadline (not the "stopped" of a fatal answer)


def not_reached(thread_id: str, deadline: float | None) -> ThreadOutcome:
    """A thread the run's deadline passed before its pass began."""
    limit = "" if deadline is None else f" ({format_duration(deadline)})"
    return ThreadOutcome(
        thread_id, NOT_REACHED, error=f"deadline{limit}: the run ended before this thread began"
    )


async def run_until(
    one_pass: ThreadPass, full: bool, stop_at: float, deadline: float | None
) -> ThreadOutcome:
    """Run the pass, stopping it at ``stop_at`` (anyio's clock) if it is still running then.

    Every write the pass makes is shielded (committed or rolled back whole), so stopping it
    leaves its thread exactly as a killed sync would: the pages committed so far, the cursor
    with them; the next pass resumes from there.
    """
    if stop_at == math.inf:  # no deadline (the daemon's runs): no cancel scope to enter per pass
        return await one_pass.run(full=full)
    with anyio.CancelScope(deadline=stop_at):
        return await one_pass.run(full=full)
    outcome = one_pass.outcome
    limit = "" if deadline is None else f" ({format_duration(deadline)})"
    outcome.result = STOPPED
    outcome.error = (
        f"deadline{limit}: stopped during its pass; what it wrote is kept, the next sync"
        " continues from there"
    )
    return outcome


@dataclass
class _Planned:
    """What one read at the start of a run found: which threads to pass over and from where."""

    runnable: list[str] = field(default_factory=list)
    skipped: list[ThreadOutcome] = field(default_factory=list)
    # Per runnable thread: its sync state (None before its first pass) and the messages stored
    # as still in progress. A thread is in one run at a time (the daemon's gate and leases), so
    # this read stays true until its pass begins; it saves two queries per thread per pass.
    known: dict[str, Known] = field(default_factory=dict)
    rechecks: set[str] = field(default_factory=set)  # threads marked gone, due for a re-check


_RUNS: Table = SyncRun.__table__  # type: ignore[attr-defined]
_RUN_THREADS: Table = SyncRunThread.__table__  # type: ignore[attr-defined]
_CHUNK = 500  # ids per IN (...) list, far below every backend's limit on bound parameters


def _plan(
    mirror: Mirror, thread_ids: Sequence[str] | None, now: datetime, gone_recheck: float
) -> _Planned:
    """Which threads to sync (parked threads wait until their time, gone ones until their
    re-check), read in one transaction."""
    planned = _Planned()
    with mirror.read() as session:
        ids = list(thread_ids) if thread_ids is not None else active_thread_ids(session, gone=True)
        threads: dict[str, Standing] = {}
        states: dict[str, SyncState] = {}
        busy: dict[str, set[str]] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            threads.update(standings(session, chunk))
            states.update(sync_state.of_threads(session, chunk))
            for thread_id, found in messages.in_progress(session, chunk).items():
                busy.setdefault(thread_id, set()).update(found)
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
            elif thread.state == "gone" and not _recheck_due(thread, state, now, gone_recheck):
                planned.skipped.append(
                    ThreadOutcome(
                        thread_id,
                        "gone",
                        error=_gone_since(thread, state, gone_recheck),
                        was_gone=True,
                    )
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
                if thread.state == "gone":
                    planned.rechecks.add(thread_id)
    return planned


def _gone_since(thread: Standing, state: SyncState | None, interval: float) -> str:
    last = (state.last_sync_at if state is not None else None) or thread.gone_at
    if last is None:
        return "gone from the server"
    since = f" since {_aware(thread.gone_at):%Y-%m-%d %H:%MZ}" if thread.gone_at else ""
    again = _aware(last) + timedelta(seconds=interval)
    return f"gone from the server{since}; asked again after {again:%Y-%m-%d %H:%MZ}"


def _recheck_due(thread: Standing, state: SyncState | None, now: datetime, interval: float) -> bool:
    """A gone thread is asked again once ``interval`` has passed since it was last asked."""
    last = (state.last_sync_at if state is not None else None) or thread.gone_at
    return last is None or (now - _aware(last)).total_seconds() >= interval


def _misconfigured(outcome: ThreadOutcome) -> MisconfiguredError:
    exc = outcome.fatal
    assert exc is not None
    setting = exc.suspect or "the configuration"
    return MisconfiguredError(
        f"sync stopped, nothing was marked: {describe(exc)}; check {setting}", setting=setting
    )


class _Watch:
    """What the run has seen so far, to stop it as soon as its answers blame the configuration.

    A fatal answer stops it at once. 404s are weighed early too: after ``early`` of them with no
    request of the run answered, one probe of another tracked thread asks whether the service
    answers at all (so a wrong endpoint costs a few requests, not one per thread).
    """

    def __init__(
        self, client: ApiClient, mirror: Mirror, report: RunReport, *, early: int, total: int
    ) -> None:
        self.client, self.mirror, self.report = client, mirror, report
        self.early, self.total = early, total
        self.stop: MisconfiguredError | None = None
        self.proven = False  # some request of the run (or the probe) was answered with a 2xx
        self._missing: list[ThreadOutcome] = []
        self._probing = anyio.Lock()

    async def saw(self, outcome: ThreadOutcome) -> bool:
        """Take one pass's outcome; False when it stopped the run (the run drops it)."""
        if outcome.result == "stopped":
            if self.stop is None:
                self.stop = _misconfigured(outcome)
            return False
        self.proven = self.proven or outcome.answered
        if outcome.result == "missing" and not outcome.was_gone:
            self._missing.append(outcome)
            if not self.proven and len(self._missing) >= self.early:
                await self._probe()
        return True

    async def _probe(self) -> None:
        async with self._probing:
            if self.proven or self.stop is not None:
                return
            proof, asked = await _probe(
                self.client, self.mirror, {o.thread_id for o in self._missing}
            )
            self.report.probes += asked
            if proof is True:
                self.proven = True
            elif isinstance(proof, ApiError) and proof.fatal:
                self.stop = _misconfigured(ThreadOutcome("", "stopped", fatal=proof))
            else:
                self.stop = _every_thread_missing(
                    self.client, self._missing, everyone=len(self._missing) == self.total
                )


async def _judge_missing(
    client: ApiClient,
    mirror: Mirror,
    report: RunReport,
    now: datetime,
    *,
    proven: bool,
    fence: Lease | None = None,
) -> None:
    """Decide what each 404 of the run means, then write those threads' states (see the
    module's docstring); raises :class:`MisconfiguredError`, writing nothing, when no request
    was answered."""
    missing = [o for o in report.outcomes if o.result == "missing"]
    revived = [o.thread_id for o in report.outcomes if o.was_gone and o.result == "synced"]
    fresh = [o for o in missing if not o.was_gone]
    if fresh and not proven and not any(o.answered for o in report.outcomes):
        proof, asked = await _probe(client, mirror, {o.thread_id for o in missing})
        report.probes += asked
        if isinstance(proof, ApiError) and proof.fatal:
            raise _misconfigured(ThreadOutcome("", "stopped", fatal=proof))
        if proof is not True:
            raise _every_thread_missing(client, fresh, everyone=len(fresh) == len(report.outcomes))
    if not missing and not revived:
        return
    previous = await mirror.run(_last_error_kinds, mirror, [o.thread_id for o in missing])
    for outcome in missing:
        _settle_missing(outcome, previous.get(outcome.thread_id))
    await mirror.run_write(_write_missing, mirror, missing, revived, now, fence)


def _every_thread_missing(
    client: ApiClient, missing: list[ThreadOutcome], *, everyone: bool
) -> MisconfiguredError:
    setting = f"{profiles.ENDPOINT_SETTING[client.profile]}, {profiles.VERSION_SETTING}"
    sample = missing[0]
    assert sample.not_found is not None
    if everyone and len(missing) > 1:
        what = "every thread answered 404"
    elif everyone:
        what = "the only thread asked answered 404 and no other tracked thread answered"
    else:
        what = f"{len(missing):,} threads answered 404 and no request of the run was answered"
    return MisconfiguredError(
        f"sync stopped, nothing was marked: {what} ({describe(sample.not_found)}); the service"
        f" is not answering for these threads here: check {setting} (a thread really deleted"
        " upstream is marked gone once another thread answers; a service shut down answers"
        " 404 everywhere too: the mirror is kept as it is)",
        setting=setting,
    )


async def _probe(
    client: ApiClient, mirror: Mirror, missing: set[str]
) -> tuple[bool | ApiError, int]:
    """Does the service answer for another tracked thread that synced before? True if one
    answered 2xx, else the last error (False when there was no thread to ask); and how many
    requests that took."""
    candidates = await mirror.run(_probe_candidates, mirror, missing)
    last: bool | ApiError = False
    for asked, thread_id in enumerate(candidates, 1):
        try:
            await client.list_messages(thread_id, limit=1, order="desc")
        except ApiError as exc:
            if exc.fatal:
                return exc, asked
            last = exc
            continue
        return True, asked
    return last, len(candidates)


def _probe_candidates(mirror: Mirror, missing: set[str]) -> list[str]:
    with mirror.read() as session:
        succeeded = sync_state.last_succeeded(session, PROBES + len(missing))
    return [t for t in succeeded if t not in missing][:PROBES]


def _last_error_kinds(mirror: Mirror, thread_ids: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    with mirror.read() as session:
        for start in range(0, len(thread_ids), _CHUNK):
            chunk = thread_ids[start : start + _CHUNK]
            out.update(sync_state.error_kinds(session, chunk))
    return out


def _settle_missing(outcome: ThreadOutcome, previous_kind: str | None) -> None:
    """A 404 in a run where the service answers: gone, waiting for confirmation, or failed."""
    exc = outcome.not_found
    assert exc is not None
    if outcome.was_gone:
        outcome.result, outcome.error = "gone", "still gone from the server; its mirror is kept"
    elif not outcome.synced_before:
        outcome.result = "failed"
        outcome.error = (
            f"thread not found; check the id (threadsync threads list) ({describe(exc)})"
        )
    elif exc.subject == "thread" or previous_kind == NOT_FOUND_KIND:
        outcome.result = "gone"
        outcome.error = "the server no longer has this thread; its mirror is kept"
        log.warning("sync.thread_gone", thread=outcome.thread_id)
    else:
        outcome.result = "failed"
        outcome.error = (
            f"{describe(exc)}; not marked gone on one 404 that does not name the thread: marked"
            " gone if the next pass answers 404 again"
        )
    outcome.cause = cause_of(exc) if outcome.result == "failed" else None


def _write_missing(
    mirror: Mirror,
    missing: list[ThreadOutcome],
    revived: list[str],
    now: datetime,
    fence: Lease | None = None,
) -> None:
    with mirror.write() as session:
        if fence is not None:  # fencing hook 3 (replicas): a lost thread is the new holder's
            missing = [o for o in missing if fence.holds(session, o.thread_id)]
            revived = [t for t in revived if fence.holds(session, t)]
        for thread_id in revived:
            row = session.get(TrackedThread, thread_id)
            if row is not None and row.state == "gone":
                row.state, row.gone_at = "active", None
                log.info("sync.thread_back", thread=thread_id)
        for outcome in missing:
            gone = outcome.result == "gone"
            unconfirmed = outcome.synced_before and outcome.cause is not None
            kind = "gone" if gone else NOT_FOUND_KIND if unconfirmed else "failed"
            found = sync_state.close_missing(
                session, outcome.thread_id, now=now, error=outcome.error, kind=kind, failed=not gone
            )
            if found and gone:
                mark_gone(session, outcome.thread_id, now)


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
    c = report.counts
    ok = sum(o.ok for o in report.outcomes)
    with mirror.write() as session:
        # One UPDATE through the connection: loading the run as an ORM object to set its
        # columns cost a SELECT and the unit of work's flush (the daemon closes a run every
        # batch, every few seconds).
        closed = session.connection().execute(
            update(_RUNS)
            .where(_RUNS.c.id == report.run_id)
            .values(
                finished_at=now,
                outcome="interrupted" if report.interrupted else "ok" if report.ok else "failed",
                threads_ok=ok,
                threads_failed=len(report.outcomes) - ok,
                added=c.added,
                changed=c.changed,
                deleted=c.deleted,
                restored=c.restored,
                requests=report.requests,
            )
        )
        assert closed.rowcount == 1, f"run {report.run_id} has no record"
        rows = [
            {
                "run_id": report.run_id,
                "thread_id": o.thread_id,
                "ok": o.ok,
                "error": o.error,
                "added": o.counts.added,
                "changed": o.counts.changed,
                "deleted": o.counts.deleted,
                "restored": o.counts.restored,
                "requests": o.requests,
            }
            for o in report.outcomes
        ]
        if rows:
            # One executemany through the connection: an ORM object per thread cost the daemon's
            # small batches more than their passes' own closing states, and the ORM's bulk
            # insert path still a third of this write (bench_freshness).
            session.connection().execute(insert(_RUN_THREADS), rows)


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
        (log.info if o.counts.writes else log.debug)("sync.thread_done", **fields)
    elif o.result == "missing":
        # Not yet a failure: the run decides what this 404 means (and logs a gone thread).
        log.info("sync.thread_not_found", **fields)
    else:
        log.warning("sync.thread_failed", error=o.error, **fields)
