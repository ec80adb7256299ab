"""The dispatcher: every few seconds, sync the threads whose time has come, then reschedule them.

One APScheduler job instead of one job per thread (measured: 2,000 per-thread jobs falling due
together blocked the loop for seconds and were discarded as misfired). Each run claims a bounded
batch of due threads (a lease, in a worker thread), syncs them through the same
:func:`sync_threads` the one-shot command uses, and writes every thread's next time in one batched
transaction. Nothing here touches the database on the event loop.

The reconcile uses the same batch machinery with ``full=True`` over every active thread; a gate
keeps it and the dispatcher from passing over one thread at the same time.

Both daemon modes share one claim (:func:`worker.daemon.due.claim_leases`) and one way of running
batches back to back (:meth:`Dispatcher.dispatch`: two lanes while claims come back full). Claims
are sized from the request budget (:func:`worker.daemon.freshness.claim_size`), and in replicas
mode also capped by what this replica syncs at once; a batch's threads are rescheduled only if
this replica still holds them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import anyio

from worker.client import ApiClient
from worker.config import Settings
from worker.daemon.due import Cadence, Checked, claim_leases, release, reschedule
from worker.daemon.fence import Fence
from worker.daemon.freshness import Freshness, claim_size, update_estimate
from worker.daemon.heartbeat import write_problem
from worker.daemon.metrics import DaemonMetrics
from worker.daemon.replicas import Replica
from worker.errors import MisconfiguredError
from worker.logs import get_logger
from worker.store.db import Mirror
from worker.store.models import utcnow
from worker.sync.outcome import ThreadOutcome
from worker.sync.runner import sync_threads

log = get_logger()

# Threads claimed per run. Bounded so one run's transaction and IN-lists stay small, and so that a
# thread added during a long backlog waits for one batch, not for the whole backlog.
DEFAULT_BATCH = 500
# Dispatch lanes: while one settles a batch and claims the next, the other's requests go.
LANES = 2
# Seconds the dispatch job holds the gate before letting a waiting reconcile in.
GATE_HOLD = 60.0


@dataclass
class BatchResult:
    """What one batch did (the dispatcher's and the reconcile's summary)."""

    claimed: int = 0
    ids: list[str] = field(default_factory=list)
    finished: int = 0
    failed: int = 0
    requests: int = 0
    seconds: float = 0.0
    outcomes: list[ThreadOutcome] = field(default_factory=list)
    problem: str | None = None  # the configuration error that stopped the batch


class Dispatcher:
    """Claims, syncs and reschedules threads; one instance per daemon, shared by its jobs."""

    def __init__(
        self,
        client: ApiClient,
        mirror: Mirror,
        settings: Settings,
        *,
        owner: str,
        metrics: DaemonMetrics | None = None,
        now: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        batch: int = DEFAULT_BATCH,
        replica: Replica | None = None,
    ) -> None:
        self.client = client
        self.mirror = mirror
        self.settings = settings
        self.owner = owner
        self.metrics = metrics
        self.now = now
        self.rng = rng or random.Random()
        self.batch = batch
        d = settings.daemon
        self.cadence = Cadence(d.sync_interval, d.sync_jitter, d.max_backoff)
        low, high = d.interval_bounds
        # Two dispatch intervals of lead: a due thread waits up to one to be claimed and up to
        # one more while its batch is paced (claims are sized to fit one interval of budget).
        lead = min(2 * d.dispatch_interval, low / 2)
        self.freshness = Freshness(
            low,
            high,
            d.interval_stretch,
            d.sync_jitter,
            d.max_backoff,
            lead=lead,
            hold=d.active_hold,
            promise=d.min_interval is not None or d.max_interval is not None,
        )
        # Requests per pass, learnt from each batch: what a claim is sized from.
        self.requests_per_pass = 1.0
        # A lease outlives any sane batch; the lock makes this daemon the only one, and a restart
        # clears leases, so the length only matters for the future multi-daemon PostgreSQL case.
        self.lease = max(900.0, 4 * d.sync_interval)
        # Replicas mode: leases of lease_ttl on the database clock, renewed, fenced.
        self.replica = replica
        if replica is not None:
            # Claim what this replica can sync at once, not a whole backlog: the other
            # replicas' claims take the rest (Oban's demand = limit - running). The budget's
            # claim size is capped by this (claim_limit).
            self.batch = min(batch, 2 * settings.sync.concurrency)
        # The dispatcher and the reconcile never pass over the mirror at the same time.
        self.gate = anyio.Lock()
        self.last_run_started: float | None = None
        self.last_run_finished: float | None = None
        # The configuration error that stopped the last batch (None once a batch runs through):
        # /readyz and `threadsync check` report it. Until then dispatches back off, so a wrong
        # key costs a handful of requests per interval, not a batch every few seconds.
        self.problem: str | None = None
        self._problem_stored = False  # until a first batch ends, one a previous daemon left may be
        self._problems = 0
        self._retry_at = 0.0
        self.clock: Callable[[], float] = time.monotonic
        # The passes in flight, across the lanes and the reconcile: sync.concurrency in all, not
        # per lane (made on first use, inside the event loop).
        self._passes: anyio.CapacityLimiter | None = None

    async def dispatch_once(self) -> BatchResult:
        """One dispatcher run: the due threads (up to one batch), synced and rescheduled."""
        self.last_run_started = time.monotonic()
        if self.problem is not None and self.clock() < self._retry_at:
            self.last_run_finished = time.monotonic()
            return BatchResult(problem=self.problem)
        if self.gate.locked():
            log.info("daemon.dispatch_skipped", reason="reconcile running")
            self.last_run_finished = time.monotonic()
            return BatchResult()
        async with self.gate:
            return await self._dispatch_batch(self.claim_limit())

    async def _dispatch_batch(self, limit: int) -> BatchResult:
        """One batch of due threads; the caller holds the gate."""
        self.last_run_started = time.monotonic()
        if self.problem is not None and self.clock() < self._retry_at:
            self.last_run_finished = time.monotonic()
            return BatchResult(problem=self.problem)
        result = await self._batch(full=False, after=None, limit=limit)
        self.last_run_finished = time.monotonic()
        if result.claimed and self.metrics is not None:
            self.metrics.dispatches.inc()
        return result

    async def dispatch(self, keep_going: Callable[[], bool] = lambda: True) -> BatchResult:
        """The dispatch job: batches back to back, in LANES overlapping lanes, while claims come
        back full.

        A claim holds one dispatch interval of budget; waiting for the next tick after each batch
        would leave the budget idle for the rest of the interval whenever threads are waiting, and
        one lane alone leaves it idle while a batch settles and the next is claimed (measured: 7.6%
        of the budget unused). Each lane claims its share of the budget, so the two together plan
        for it. The gate is held for at most GATE_HOLD seconds at a time, so a reconcile waiting
        for it goes next.
        """
        total = BatchResult()
        while True:
            if self.gate.locked():
                log.info("daemon.dispatch_skipped", reason="reconcile running")
                return total
            async with self.gate:
                saturated = await self._lanes(total, keep_going, self.clock() + GATE_HOLD)
            if not saturated or not self._going(keep_going):
                return total

    def _going(self, keep_going: Callable[[], bool]) -> bool:
        """More batches, unless the daemon stops or (replicas) this replica drains."""
        return keep_going() and (self.replica is None or not self.replica.draining)

    async def _lanes(
        self, total: BatchResult, keep_going: Callable[[], bool], until: float
    ) -> bool:
        """Run the lanes until a claim comes back short or ``until``; True: still saturated."""
        saturated = [False] * LANES

        async def lane(index: int) -> None:
            while True:
                limit = max(1, self.claim_limit() // LANES)
                result = await self._dispatch_batch(limit)
                _add(total, result)
                if (
                    result.claimed < limit
                    or result.problem is not None
                    or not self._going(keep_going)
                ):
                    return
                if self.clock() >= until:
                    saturated[index] = True
                    return

        async with anyio.create_task_group() as tg:
            for index in range(LANES):
                tg.start_soon(lane, index)
        return all(saturated)

    async def reconcile(self) -> BatchResult:
        """A full pass over every active thread, batch by batch (waits for a running dispatch)."""
        total = BatchResult()
        started = time.monotonic()
        after: str | None = None
        async with self.gate:
            while True:
                result = await self._batch(full=True, after=after)
                if not result.claimed or result.problem is not None:
                    break
                total.claimed += result.claimed
                total.finished += result.finished
                total.failed += result.failed
                total.requests += result.requests
                after = max(result.ids)
        total.seconds = time.monotonic() - started
        log.info(
            "daemon.reconcile_finished",
            threads=total.finished,
            failed=total.failed,
            requests=total.requests,
            seconds=round(total.seconds, 3),
        )
        return total

    async def _batch(self, *, full: bool, after: str | None, limit: int = 0) -> BatchResult:
        now = self.now()
        fence: Fence | None = None
        if self.replica is None:
            ids = await self.mirror.run_write(self._claim, now, full, after, limit)
        else:
            fence = await self.mirror.run_write(self._claim_fenced, now, full, after, limit)
            self.replica.track(fence)  # on the loop: the renewal reads the set from a thread
            ids = list(fence.epochs)
        result = BatchResult(claimed=len(ids), ids=ids)
        if not ids:
            return result
        started = time.monotonic()
        done: dict[str, ThreadOutcome] = {}

        ended: dict[str, datetime] = {}

        def on_done(outcome: ThreadOutcome) -> None:
            done[outcome.thread_id] = outcome
            ended[outcome.thread_id] = self.now()  # the pass's own time, not the batch's end
            if self.metrics is not None:
                self.metrics.record_outcome(outcome)

        try:
            report = await sync_threads(
                self.client,
                self.mirror,
                thread_ids=ids,
                full=full,
                concurrency=self.settings.sync.concurrency,
                page_limit=self.settings.sync.page_limit,
                now=self.now,
                on_thread_done=on_done,
                gone_recheck=self.settings.sync.gone_recheck_interval,
                fence=fence,
                limiter=self._pass_slots(),
            )
            # Threads the runner skipped (parked, gone) get a next time too.
            for outcome in report.outcomes:
                done.setdefault(outcome.thread_id, outcome)
        except MisconfiguredError as exc:
            # Nothing was marked; only the threads whose pass ended get their next time, the
            # others stay due and are tried again once the back-off has passed.
            result.problem = str(exc)
        finally:
            # Shielded: on shutdown the finished threads still get their next time and the rest
            # give their lease back (they stay due and the next daemon takes them first).
            with anyio.CancelScope(shield=True):
                if fence is not None:
                    fence.closed = True
                checked = {t: _checked(o, ended.get(t)) for t, o in done.items()}
                await self.mirror.run_write(self._settle, ids, checked, fence)
                if fence is not None and self.replica is not None:
                    self.replica.forget(fence)
        await self._note_problem(result.problem)
        result.outcomes = list(done.values())
        result.finished = len(done)
        result.failed = sum(not o.ok for o in done.values())
        result.requests = sum(o.requests for o in done.values())
        result.seconds = time.monotonic() - started
        if not full:
            self.requests_per_pass = update_estimate(
                self.requests_per_pass, result.requests, result.finished
            )
        changed = sum(o.counts.writes for o in done.values())
        (log.info if changed or result.failed else log.debug)(
            "daemon.batch_finished",
            changed=changed,
            kind="full" if full else "sync",
            claimed=result.claimed,
            failed=result.failed,
            requests=result.requests,
            seconds=round(result.seconds, 3),
        )
        return result

    def _pass_slots(self) -> anyio.CapacityLimiter:
        """The one limiter every batch's passes share: two lanes each running
        ``sync.concurrency`` passes would have twice that in flight (and twice the connections)."""
        concurrency = max(1, self.settings.sync.concurrency)
        if self._passes is None:
            self._passes = anyio.CapacityLimiter(concurrency)
        elif self._passes.total_tokens != concurrency:  # the setting changed (tests, a reload)
            self._passes.total_tokens = concurrency
        return self._passes

    async def _note_problem(self, problem: str | None) -> None:
        """Remember (and persist, for `threadsync check`) a configuration error, or its end."""
        if problem is None and self.problem is None and self._problem_stored:
            return
        if problem is None:
            if self.problem is not None:
                log.info("daemon.recovered", problem=self.problem)
            self._problems = 0
        else:
            self._problems += 1
            d = self.settings.daemon
            cap = max(d.sync_interval, d.dispatch_interval)  # a fixed DNS is noticed soon enough
            delay = min(cap, d.dispatch_interval * 2 ** min(self._problems, 20))
            self._retry_at = self.clock() + delay
            log.error("daemon.configuration_error", problem=problem, retry_in=round(delay, 3))
        self.problem = problem
        with anyio.CancelScope(shield=True):
            await self.mirror.run_write(write_problem, self.mirror, problem, self.now())
        self._problem_stored = True

    def _claim(self, now: datetime, full: bool, after: str | None, limit: int) -> list[str]:
        with self.mirror.write() as session:
            claimed = claim_leases(
                session,
                now=now,
                owner=self.owner,
                lease=self.lease,
                limit=self.batch if full else (limit or self.claim_limit()),
                due_only=not full,
                after=after,
                default_interval=self.freshness.min_interval,
            )
        return list(claimed.epochs)

    def _claim_fenced(self, now: datetime, full: bool, after: str | None, limit: int) -> Fence:
        assert self.replica is not None
        with self.mirror.write() as session:
            return self.replica.claim(
                session,
                now=now,
                limit=self.batch if full else (limit or self.claim_limit()),
                due_only=not full,
                after=after,
                default_interval=self.freshness.min_interval,
            )

    @property
    def budget(self) -> float:
        """Requests per second this daemon may send: ``daemon.max_requests_per_second``, or in
        replicas mode this replica's share of it (the budget is global)."""
        share = 1 if self.replica is None else self.replica.peers
        return self.settings.daemon.request_budget / max(1, share)

    def claim_limit(self) -> int:
        """Due threads to claim: as many passes as the budget serves in one dispatch interval,
        at most one batch (replicas: what this replica syncs at once)."""
        horizon = self.settings.daemon.dispatch_interval
        return claim_size(self.budget, horizon, self.requests_per_pass, self.batch)

    def _settle(
        self, claimed: list[str], checked: dict[str, Checked], fence: Fence | None = None
    ) -> None:
        now = self.now()
        rand = {thread_id: self.rng.random() for thread_id in checked}
        finished = list(checked)
        with self.mirror.write() as session:
            if fence is not None and self.replica is not None:
                # Only threads this replica still holds get their next time (and interval) from
                # it: a thread taken over since belongs to its new holder's pass.
                finished = self.replica.held_now(session, fence, finished)
            reschedule(
                session,
                finished,
                now=now,
                cadence=self.cadence,
                rand=rand,
                gone_recheck=self.settings.sync.gone_recheck_interval,
                freshness=self.freshness,
                checked=checked,
            )
            unfinished = [t for t in claimed if t not in checked]
            release(session, unfinished, self.owner, None if fence is None else fence.held())


def _add(total: BatchResult, result: BatchResult) -> None:
    total.claimed += result.claimed
    total.finished += result.finished
    total.failed += result.failed
    total.requests += result.requests
    total.problem = result.problem or total.problem


def _checked(outcome: ThreadOutcome, at: datetime | None) -> Checked:
    """What the schedule needs from a pass: did it change anything, did it succeed, when."""
    return Checked(
        changed=outcome.counts.writes > 0,
        ok=outcome.result == "synced",
        at=at if at is not None else utcnow(),
    )
