"""Replicas mode: several daemons share one PostgreSQL mirror through row leases.

PostgreSQL is the only arbiter: no session advisory lock, no LISTEN, no transaction open across an
HTTP request (so it works behind PgBouncer in transaction mode). Every expiry is computed from the
database's clock.

- Identity: each process start gets a new id, ``<host>:<pid>:<random>`` (pid 1 and a reused
  hostname are common in containers), registered in ``daemon_replica`` with a heartbeat.
- Thread leases: :func:`worker.daemon.due.claim_leases` claims due threads in one statement and
  gives each a new fencing epoch; every write of a pass checks it (``worker/daemon/fence.py``).
- Renewal: every ``lease_ttl / 3`` (20 s by default, TTL 60 s) one statement renews every lease
  this replica holds (threads and periodic jobs). A thread missing from the answer was taken
  over: its pass stops at its next request or write. A replica that cannot renew stops trusting
  its leases ``lease_ttl - lease_ttl / 6`` after its last good renewal began (monotonic clock),
  so its passes stop before another replica may take the threads over.
- Shutdown: the replica row says ``draining``, claims stop, passes end at a page boundary and
  their leases are released at once (another replica takes them at its next dispatch); then the
  row is deleted.

The request budget ``B`` (``daemon.max_requests_per_second``) is global. Each replica paces at
``B / n``, ``n`` the live replicas it counted (heartbeat younger than one TTL, itself and joiners
included) at its last *counted beat*: its heartbeat (never moving back) and the count in one
transaction, at registration, at every claim and at every renewal round. The pacer takes the new
share on the event loop before that transaction commits, granted until ``TTL - TTL/6`` after the
beat began (monotonic clock); past it the pacer holds every request until the next beat.

Admission closes the join window: a replica that (re)joins (its first beat, or a beat finding its
own heartbeat older than ``TTL - TTL/6``: paused, or renewals failing) sends nothing until every
other live replica has made a counted beat after its (re)join: that beat counted it and set its
pacer to the smaller share before it committed. So at every instant the replicas that may send,
``S``, each pace at ``B / n_i`` with ``n_i >= |S|``: the shares add up to at most ``B``. With the
pacer's bucket (``burst`` requests, kept in requests across a change; a lower rate voids slots
given at the higher one), the requests of all replicas in any window of ``w`` seconds are at most
``B * w + burst * k``, ``k`` the replicas admitted in that window (a replica re-admitted counts once
per admission). A joiner waits about one dispatch interval (others beat at each claim), at most
one renewal period while the others beat; a peer killed or paused (SIGKILL, SIGSTOP) holds it
until that peer's heartbeat is one TTL old, which is also when the others stop counting it live:
up to one TTL. Counting only peers within their grant (``TTL - TTL/6``) would not be safe: a beat
begun inside the grant may still commit, unseen, up to ``TTL/6`` later with a count that missed
the joiner. Assumed: replicas' monotonic clocks agree within ``TTL/6`` per TTL, a beat's
transaction lasts under ``TTL/6``, and the database clock does not step back. A replica leaving
lowers nobody's rate; the others' shares grow at their next beat after its row is deleted (or
its heartbeat ages past one TTL): under-use, never overshoot.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.lowlevel import EventLoopToken
from sqlalchemy import delete, event, func, select, tuple_, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col

from worker import __version__
from worker.daemon.due import claim_leases
from worker.daemon.fence import Fence
from worker.errors import ConfigError, ThreadsyncError
from worker.logs import describe_exception, get_logger
from worker.store.db import Mirror, normalise_url
from worker.store.models import DaemonReplica, JobSlot, TrackedThread

if TYPE_CHECKING:  # metrics load prometheus_client, the client httpx: `status` and `migrate`
    from worker.client.pacer import Pacer  # need none of it
    from worker.daemon.metrics import DaemonMetrics

log = get_logger()

# A replica row whose heartbeat is older than this many TTLs belongs to a dead process: pruned.
STALE_AFTER_TTLS = 5
RENEWALS_PER_TTL = 3  # renew every TTL/3: two renewals may fail before a lease can expire


def new_replica_id(hostname: str | None = None, pid: int | None = None) -> str:
    """Unique per process start: host and pid for people, a random part for uniqueness."""
    host = (hostname or socket.gethostname())[:60]
    return f"{host}:{pid if pid is not None else os.getpid()}:{secrets.token_hex(6)}"


def refuse_replicas_on(database_url: str) -> None:
    """Replicas coordinate through PostgreSQL row locks and its clock: SQLite has neither.
    Checked before the mirror is opened, so a refused start creates no SQLite file."""
    if normalise_url(database_url).get_backend_name() == "sqlite":
        raise ConfigError(
            "daemon.mode = replicas needs a PostgreSQL mirror (this one is SQLite);"
            " set daemon.mode = single or point THREADSYNC_DATABASE_URL at PostgreSQL"
        )


def lease_margin(ttl: float) -> float:
    """How much sooner than the database a replica stops trusting its own leases."""
    return ttl / 6


@dataclass
class Held:
    """A periodic job's lease this replica holds (see ``worker/daemon/slots.py``)."""

    name: str
    epoch: int
    lost: bool = False
    scope: anyio.CancelScope | None = None  # cancelled when the lease is lost


class Replica:
    """This process as one of several daemons: its registry row, leases and their renewal."""

    def __init__(
        self,
        mirror: Mirror,
        *,
        ttl: float,
        metrics: DaemonMetrics | None = None,
        replica_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        budget: float | None = None,
    ) -> None:
        self.mirror = mirror
        self.ttl = ttl
        self.metrics = metrics
        self.id = replica_id or new_replica_id()
        self.clock = clock
        self.fences: set[Fence] = set()
        self.jobs: dict[str, Held] = {}  # periodic job leases held now
        self.draining = False
        self.last_renewal: float | None = None
        # Live replicas (heartbeat within one TTL, this one included), counted at each counted
        # beat: the request budget is global, so each replica paces at its share (budget / peers)
        # once admitted (the module docstring gives the rule and its bound).
        self.peers = 1
        self.budget = budget
        self.admitted = False
        self.joined_at: datetime | None = None  # database time after this replica's (re)join
        self.granted_until = -math.inf  # monotonic: the share's grant (see lease_margin)
        self.pacer: Pacer | None = None
        self._loop: tuple[int, EventLoopToken] | None = None  # the pacer's loop: thread, token
        if metrics is not None:
            metrics.replica.labels(replica=self.id).set(1)

    @property
    def period(self) -> float:
        return self.ttl / RENEWALS_PER_TTL

    # -- registry ------------------------------------------------------------------------------

    def _row(self) -> DaemonReplica:
        """This process's registry row (the first beat, or again after being pruned)."""
        return DaemonReplica(
            replica_id=self.id,
            hostname=socket.gethostname()[:255],
            pid=os.getpid(),
            version=__version__,
            draining=self.draining,
        )

    def register(self) -> None:
        """Blocking. Insert this replica's row; prune rows of replicas long dead."""
        with self.mirror.write() as session:
            session.execute(
                delete(DaemonReplica).where(
                    col(DaemonReplica.heartbeat_at)
                    < func.now() - _seconds(STALE_AFTER_TTLS * self.ttl)
                )
            )
            session.add(self._row())
            session.flush()
            self.peers = max(1, live_replicas(session, self.ttl))
            _beat_now(session, self.id)
        log.info("daemon.replica_registered", replica=self.id, lease_ttl=self.ttl, peers=self.peers)
        self.beat()  # after the insert committed: the join's time, and admitted at once if alone

    def drain(self) -> None:
        """Blocking. Say (for `status`) that this replica is handing its work over."""
        self.draining = True
        with self.mirror.write() as session:
            session.execute(
                update(DaemonReplica)
                .where(col(DaemonReplica.replica_id) == self.id)
                .values(draining=True)
            )

    def deregister(self) -> None:
        """Blocking. The last word: release whatever is still held, delete the row."""
        with self.mirror.write() as session:
            session.execute(
                update(TrackedThread)
                .where(col(TrackedThread.lease_owner) == self.id)
                .values(lease_owner=None, lease_until=None)
            )
            session.execute(delete(DaemonReplica).where(col(DaemonReplica.replica_id) == self.id))

    # -- the budget's share (module docstring: the rule and its bound) -------------------------

    def attach(self, pacer: Pacer) -> None:
        """On the event loop: the pacer this replica's share of the budget governs."""
        self.pacer = pacer
        self._loop = (threading.get_ident(), anyio.lowlevel.current_token())
        self._apply()

    def beat(self) -> None:
        """Blocking. A counted beat on its own (after registration; tests)."""
        started = self.clock()
        with self.mirror.write(small=True) as session:
            self._beat(session, started)

    def _beat(self, session: Session, started: float) -> None:
        """First in a write transaction: the heartbeat, the live replicas counted, admission.

        The update takes this replica's row lock, so its beats (claims of two lanes, renewal)
        run one at a time and each applies its count after the previous one's. The share is
        applied before commit; its grant is extended only once the heartbeat has committed.
        """
        margin = lease_margin(self.ttl)
        mine = col(DaemonReplica.replica_id) == self.id
        fresh = session.execute(
            update(DaemonReplica)
            .where(mine, col(DaemonReplica.heartbeat_at) > func.now() - _seconds(self.ttl - margin))
            .values(heartbeat_at=func.greatest(col(DaemonReplica.heartbeat_at), func.now()))
        )
        if not getattr(fresh, "rowcount", 1):
            # Paused or cut off past the grant (or pruned): the others may have counted without
            # this replica, so it joins again, its join time taken after this beat commits.
            if not getattr(_beat_now(session, self.id), "rowcount", 1):
                session.add(self._row())
                session.flush()
                _beat_now(session, self.id)
            if self.admitted:
                log.warning("daemon.budget_rejoin", replica=self.id)
            self.admitted, self.joined_at, self.granted_until = False, None, -math.inf
        elif not self.admitted:
            if self.joined_at is None:  # this transaction began after the (re)join committed
                self.joined_at = session.execute(select(func.now())).scalar_one()
            self.admitted = not others_behind(session, self.id, self.joined_at, self.ttl)
            if self.admitted:
                log.info("daemon.budget_admitted", replica=self.id)
        self.peers = max(1, live_replicas(session, self.ttl))
        self._apply()
        if self.admitted:
            event.listen(session, "after_commit", lambda _: self._grant(started), once=True)

    def _grant(self, started: float) -> None:
        """After a counted beat committed: the share holds until the heartbeat could look dead."""
        if self.admitted:  # not if a later beat found this replica lapsed meanwhile
            until = started + self.ttl - lease_margin(self.ttl)
            self.granted_until = max(self.granted_until, until)
        self._apply()

    def _apply(self) -> None:
        """Set the pacer to this replica's share and grant (on its event loop, waiting for it)."""
        pacer, budget = self.pacer, self.budget
        if pacer is None or budget is None:
            return

        def apply() -> None:
            # Read on the loop, not when called: a later beat's share, set meanwhile from
            # another thread, must not be overwritten by this one's.
            rate = budget / self.peers
            until = self.granted_until if self.admitted else -math.inf
            if pacer.rate != rate:
                log.info("daemon.budget_share", requests_per_second=round(rate, 3))
            pacer.set_rate(rate, until=until)

        if self._loop is None or self._loop[0] == threading.get_ident():
            apply()
        else:
            anyio.from_thread.run_sync(apply, token=self._loop[1])

    # -- thread leases -------------------------------------------------------------------------

    def claim(
        self,
        session: Session,
        *,
        now: datetime,
        limit: int,
        due_only: bool,
        after: str | None,
        default_interval: float = 300.0,
    ) -> Fence:
        """In a write transaction: claim due threads; the :class:`Fence` their passes check.
        ``default_interval``: the interval of a thread never checked (the claim's order)."""
        started = self.clock()
        self._beat(session, started)  # first: a claim by a replica not yet admitted takes none
        claimed = claim_leases(
            session,
            now=now,
            owner=self.id,
            lease=self.ttl,
            limit=0 if self.draining or not self.admitted else limit,
            due_only=due_only,
            after=after,
            fenced=True,
            default_interval=default_interval,
        )
        fence = Fence(
            self.id,
            self.ttl,
            claimed.epochs,
            trusted_until=started + self.ttl - lease_margin(self.ttl),
            clock=self.clock,
        )
        if self.metrics is not None and claimed.epochs:
            self.metrics.lease_claims.inc(len(claimed.epochs))
            self.metrics.lease_takeovers.inc(claimed.taken_over)
        return fence

    def held_now(self, session: Session, fence: Fence, ids: Iterable[str]) -> list[str]:
        """In a write transaction: those of ``ids`` this fence still holds (row-locked until
        commit, so no takeover slips in before the transaction's own writes)."""
        pairs = [(t, e) for t, e in fence.held().items() if t in set(ids)]
        if not pairs:
            return []
        rows = session.execute(
            select(col(TrackedThread.thread_id))
            .where(
                col(TrackedThread.lease_owner) == self.id,
                tuple_(col(TrackedThread.thread_id), col(TrackedThread.lease_epoch)).in_(pairs),
            )
            .with_for_update()
        )
        held = {row[0] for row in rows}
        lost = {t for t, _ in pairs} - held
        self._lost(fence, lost)
        return [t for t in ids if t in held]

    def track(self, fence: Fence) -> None:
        self.fences.add(fence)
        self._gauge()

    def forget(self, fence: Fence) -> None:
        self.fences.discard(fence)
        self._gauge()

    def _gauge(self) -> None:
        if self.metrics is not None:
            held = sum(len(f.held()) for f in self.fences) + len(self.jobs)
            self.metrics.leases_held.set(held)

    def _lost(self, fence: Fence, lost: set[str]) -> None:
        fresh = lost - fence.lost
        if not fresh:
            return
        fence.lost |= fresh
        if self.metrics is not None:
            self.metrics.leases_lost.inc(len(fresh))
        log.warning("daemon.leases_lost", replica=self.id, threads=len(fresh))

    # -- renewal -------------------------------------------------------------------------------

    def renew(self, fences: list[Fence] | None = None, held: list[Held] | None = None) -> None:
        """Blocking. One renewal round: the heartbeat, every thread lease and job lease held.
        ``fences`` and ``held``: what is held, listed on the event loop (which changes both)."""
        started = self.clock()
        fences = [f for f in (list(self.fences) if fences is None else fences) if not f.closed]
        running = list(self.jobs.values()) if held is None else held
        pairs = [(t, e) for f in fences for t, e in f.held().items()]
        jobs = [(h.name, h.epoch) for h in running if not h.lost]
        with self.mirror.write(small=True) as session:
            self._beat(session, started)  # first: the heartbeat row orders this replica's beats
            renewed = renew_threads(session, self.id, pairs, self.ttl) if pairs else set()
            kept = renew_jobs(session, self.id, jobs, self.ttl) if jobs else set()
        for fence in fences:
            if not fence.closed:  # a batch settling meanwhile gave its leases back itself
                self._lost(fence, set(fence.held()) - renewed)
            fence.trusted_until = max(
                fence.trusted_until, started + self.ttl - lease_margin(self.ttl)
            )
        for job in running:
            if (job.name, job.epoch) in set(jobs) and job.name not in kept:
                job.lost = True
                if self.metrics is not None:
                    self.metrics.leases_lost.inc()
                log.warning("daemon.job_lease_lost", replica=self.id, job=job.name)
        self.last_renewal = started
        if self.metrics is not None:
            self.metrics.lease_renewals.inc()
            held_now = sum(len(f.held()) for f in fences) + sum(not j.lost for j in running)
            self.metrics.leases_held.set(held_now)

    async def renewal_loop(self, on_round: Callable[[], Awaitable[None]]) -> None:
        """Renew every ``period`` seconds; a failed round is logged and the next one tries again
        (the fences' trust windows, not this loop, stop the passes when renewals keep failing).
        After each round: cancel the jobs whose lease was lost, then ``on_round``."""
        while True:
            await anyio.sleep(self.period)
            try:
                await self.mirror.run_write(self.renew, list(self.fences), list(self.jobs.values()))
            except (ThreadsyncError, SQLAlchemyError) as exc:
                log.warning("daemon.renewal_failed", replica=self.id, error=describe_exception(exc))
                continue
            for held in list(self.jobs.values()):
                if held.lost and held.scope is not None:
                    held.scope.cancel()
            try:
                await on_round()
            except (ThreadsyncError, SQLAlchemyError) as exc:
                log.warning("daemon.catch_up_failed", error=describe_exception(exc))


def live_replicas(session: Session, ttl: float) -> int:
    """Replicas whose heartbeat is younger than one TTL (draining ones too: they still send
    requests until their pages end). A killed replica stops counting one TTL after its death."""
    query = select(func.count()).where(col(DaemonReplica.heartbeat_at) > func.now() - _seconds(ttl))
    return int(session.execute(query).scalar_one())


def others_behind(session: Session, replica_id: str, since: datetime, ttl: float) -> int:
    """Live replicas other than ``replica_id`` whose last counted beat began at or before
    ``since``: they may not have counted it yet. Live for one TTL, not only for the grant
    (``TTL - TTL/6``): a beat begun inside its grant may commit up to ``TTL/6`` later, with a
    count that missed the joiner, and its new heartbeat is not visible before then."""
    query = select(func.count()).where(
        col(DaemonReplica.replica_id) != replica_id,
        col(DaemonReplica.heartbeat_at) > func.now() - _seconds(ttl),
        col(DaemonReplica.heartbeat_at) <= since,
    )
    return int(session.execute(query).scalar_one())


def _beat_now(session: Session, replica_id: str) -> object:
    """The heartbeat on the database clock (a registration's own would be the host's)."""
    return session.execute(
        update(DaemonReplica)
        .where(col(DaemonReplica.replica_id) == replica_id)
        .values(heartbeat_at=func.now())
    )


def _seconds(n: float) -> object:
    return func.make_interval(0, 0, 0, 0, 0, 0, n)


def renew_threads(
    session: Session, owner: str, pairs: list[tuple[str, int]], ttl: float
) -> set[str]:
    """One statement: extend every ``(thread, epoch)`` lease ``owner`` still holds; the threads
    it holds (renewed, or busy in one of its own page writes, whose guard extends the lease).

    Rows are taken ``SKIP LOCKED``: a page write holds its thread's row until it commits, and
    waiting for it here, with rows locked in another order, is a deadlock. A skipped row is then
    read as committed: still ours if owner and epoch match.
    """
    mine = (
        col(TrackedThread.lease_owner) == owner,
        tuple_(col(TrackedThread.thread_id), col(TrackedThread.lease_epoch)).in_(pairs),
    )
    free = (
        select(col(TrackedThread.thread_id))
        .where(*mine)
        .with_for_update(skip_locked=True, key_share=True)
        .subquery("free")
    )
    rows = session.execute(
        update(TrackedThread)
        .where(col(TrackedThread.thread_id) == free.c.thread_id)
        .values(lease_until=func.now() + _seconds(ttl))
        .returning(col(TrackedThread.thread_id))
    )
    renewed = {row[0] for row in rows}
    if len(renewed) == len(pairs):
        return renewed
    busy = session.execute(
        select(col(TrackedThread.thread_id)).where(
            *mine, col(TrackedThread.thread_id).not_in(renewed)
        )
    )
    return renewed | {row[0] for row in busy}


def renew_jobs(session: Session, owner: str, jobs: list[tuple[str, int]], ttl: float) -> set[str]:
    """One statement for the periodic jobs' leases (``worker/daemon/slots.py``)."""
    rows = session.execute(
        update(JobSlot)
        .where(
            col(JobSlot.lease_owner) == owner,
            tuple_(col(JobSlot.name), col(JobSlot.lease_epoch)).in_(jobs),
        )
        .values(lease_until=func.now() + _seconds(ttl))
        .returning(col(JobSlot.name))
    )
    return {row[0] for row in rows}


def lease_holders(session: Session) -> dict[str, str]:
    """For `status`: thread -> the registered replica holding its lease now."""
    rows = session.execute(
        select(col(TrackedThread.thread_id), col(TrackedThread.lease_owner)).join(
            DaemonReplica, col(DaemonReplica.replica_id) == col(TrackedThread.lease_owner)
        )
    )
    return {row[0]: row[1] for row in rows}


@dataclass(frozen=True)
class ReplicaRow:
    replica_id: str
    heartbeat_at: datetime
    draining: bool
    threads: int
    pid: int
    started_at: datetime


def replica_rows(session: Session) -> list[ReplicaRow]:
    """For `status`: every registered replica, its last heartbeat and how many threads it holds
    (with its pid and start, which bench_replicas maps to the processes it launched)."""
    held = (
        select(func.count())
        .where(col(TrackedThread.lease_owner) == col(DaemonReplica.replica_id))
        .scalar_subquery()
    )
    rows = session.execute(
        select(
            col(DaemonReplica.replica_id),
            col(DaemonReplica.heartbeat_at),
            col(DaemonReplica.draining),
            held,
            col(DaemonReplica.pid),
            col(DaemonReplica.started_at),
        ).order_by(col(DaemonReplica.replica_id))
    )
    return [ReplicaRow(r[0], r[1], bool(r[2]), int(r[3]), int(r[4]), r[5]) for r in rows]
