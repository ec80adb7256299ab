"""Periodic jobs across replicas: once per schedule slot, through a lease per job.

Every replica keeps the same APScheduler timers; a timer firing only means "try". The job's row in
``job_slot`` decides, in one statement on the database clock (graphile-worker's
``known_crontabs`` rule, procrastinate's unique ``(task, ts)`` and River's term-scoped lease in one
row, see ../shared/SCALEOUT.md §9.5):

- the slot is the current time truncated to the job's period (a minute for crontab jobs, which
  fire on the same minute everywhere);
- a replica may take the job when nobody holds its lease (free, or expired by the database
  clock) and its last slot is either finished and older than the current one, or not finished at
  all: an unfinished slot (its holder died, or handed it back on SIGTERM) is resumed for that same
  slot before any newer one runs;
- the winner's lease is renewed with its thread leases (``worker/daemon/replicas.py``); a lost
  lease cancels the job; the end is recorded with ``slot_done_at`` only while its epoch still
  holds, so a slot is finished exactly once.

Each replica also looks for unfinished slots every renewal round, so another replica finishes a
slot whose holder died without waiting for the job's next timer.

A job's side effects are fenced by its lease (:class:`SlotFence`, available to the body as
:func:`current_fence`): each database write of the job (a push's outcomes, a prune batch, a
migration's ledger change, a discovery's new threads) checks the lease in its own transaction,
and each remote act (a push's modify, a backup's publish, a migration's create, append or
metadata write) checks it in a transaction of its own immediately before acting. The check
runs on the database clock and extends the lease by a TTL, so a holder paused past its lease
finds it lost when it wakes. What a check cannot fence is the moment between its commit and the
act reaching the service (a remote service checks no token): the acts are made idempotent for
that window, but for a migration's append, which cannot be (README, "Migration across
replicas").

Lock order (PostgreSQL), the one every transaction that meets several of these keeps:

1. threads' advisory locks (:func:`worker.store.db.lock_threads`, all at once, in key order);
2. ``tracked_thread`` rows (a page write's :func:`~worker.daemon.fence.check_lease`, the
   renewal's ``renew_threads``);
3. ``job_slot`` rows (a job's :meth:`SlotFence.guard`, the renewal's ``renew_jobs``).

So a job write that also writes messages (a push recording what the server answered) takes the
thread locks before its guard (``worker/outbox/record.py``); a migration's guarded ledger
change runs in a transaction of its own, never in a sync page's shared group, which would lock
thread rows after it (``worker/migrate/run.py``). Discovery (new rows only) and pruning (run
rows) under a guard take neither.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
from sqlalchemy import text
from sqlmodel import Session

from worker.daemon.due import aware
from worker.daemon.fence import SlotLost
from worker.daemon.replicas import Held, Replica
from worker.logs import get_logger
from worker.store.db import Mirror

log = get_logger()

CRON_PERIOD = 60.0  # crontab jobs fire on the same minute on every replica: that minute is the slot

_CLAIM = text(
    """
    WITH current AS (
      SELECT to_timestamp(floor(extract(epoch FROM now()) / :period) * :period) AS slot
    )
    UPDATE job_slot AS j
    SET lease_owner = :owner,
        lease_until = now() + make_interval(secs => :ttl),
        lease_epoch = j.lease_epoch + 1,
        slot = CASE WHEN j.slot IS NOT NULL AND j.slot_done_at IS NULL THEN j.slot
                    ELSE current.slot END,
        slot_done_at = NULL,
        last_outcome = NULL
    FROM current
    WHERE j.name = :name
      AND (j.lease_until IS NULL OR j.lease_until < now())
      AND (j.slot IS NULL OR j.slot_done_at IS NULL OR j.slot < current.slot)
    RETURNING j.lease_epoch, j.slot
    """
)

_DONE = text(
    """
    UPDATE job_slot SET slot_done_at = now(), last_outcome = :outcome,
                        lease_owner = NULL, lease_until = NULL
    WHERE name = :name AND lease_owner = :owner AND lease_epoch = :epoch
    """
)

_HAND_BACK = text(
    """
    UPDATE job_slot SET lease_owner = NULL, lease_until = NULL
    WHERE name = :name AND lease_owner = :owner AND lease_epoch = :epoch
    """
)

# The fence of a job's side effects: its lease still held (owner and epoch), extended by a TTL
# from the database clock; the row stays locked until the transaction commits.
_GUARD = text(
    """
    UPDATE job_slot
    SET lease_until = greatest(lease_until, now() + make_interval(secs => :ttl))
    WHERE name = :name AND lease_owner = :owner AND lease_epoch = :epoch
    RETURNING name
    """
)

_ORPHANS = text(
    """
    SELECT name FROM job_slot
    WHERE slot IS NOT NULL AND slot_done_at IS NULL
      AND (lease_until IS NULL OR lease_until < now())
    """
)


def claim_slot(
    session: Session, name: str, owner: str, period: float, ttl: float
) -> tuple[int, datetime] | None:
    """The job's lease and the slot to run, or None when another replica has it or it is done."""
    session.execute(
        text("INSERT INTO job_slot (name, lease_epoch) VALUES (:name, 0) ON CONFLICT DO NOTHING"),
        {"name": name},
    )
    row = session.execute(
        _CLAIM, {"name": name, "owner": owner, "period": period, "ttl": ttl}
    ).first()
    if row is None:
        return None
    slot = aware(row[1])
    assert slot is not None
    return int(row[0]), slot


@dataclass(eq=False)
class SlotFence:
    """The lease of the slot a job body is running: what its side effects check."""

    mirror: Mirror
    owner: str
    ttl: float
    held: Held
    slot: datetime

    @property
    def job(self) -> str:
        return self.held.name

    def guard(self, session: Session) -> None:
        """In the transaction that records (or precedes) an act: raise :class:`SlotLost` unless
        this replica still holds the job's lease; then it lasts at least a TTL more."""
        if self.held.lost:
            raise SlotLost(self.job)
        params = {"name": self.job, "owner": self.owner, "epoch": self.held.epoch, "ttl": self.ttl}
        if session.execute(_GUARD, params).first() is None:
            self.held.lost = True
            raise SlotLost(self.job)

    def check(self) -> None:
        """Blocking: :meth:`guard` in a transaction of its own, right before a remote act."""
        with self.mirror.write(small=True) as session:
            self.guard(session)


_current: ContextVar[SlotFence | None] = ContextVar("threadsync_slot_fence", default=None)


def current_fence() -> SlotFence | None:
    """The fence of the slot the calling job body runs in (None: single mode, no slots)."""
    return _current.get()


@contextmanager
def running_in(fence: SlotFence) -> Iterator[None]:
    """Job bodies called in this block see ``fence`` as :func:`current_fence`."""
    token = _current.set(fence)
    try:
        yield
    finally:
        _current.reset(token)


class Slots:
    """Wraps job bodies so that each slot runs once across replicas."""

    def __init__(self, mirror: Mirror, replica: Replica) -> None:
        self.mirror = mirror
        self.replica = replica
        self.bodies: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {}

    def wrap(
        self, name: str, period: float, body: Callable[[], Awaitable[Any]]
    ) -> Callable[[], Awaitable[None]]:
        async def once_per_slot() -> None:
            await self.run(name, period, body)

        return once_per_slot

    def remember(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """The runner-wrapped job, started by :meth:`catch_up` for an unfinished slot."""
        self.bodies[name] = run

    async def run(self, name: str, period: float, body: Callable[[], Awaitable[Any]]) -> None:
        replica = self.replica
        if replica.draining or name in replica.jobs:
            return
        claimed = await self.mirror.run_write(self._claim, name, period)
        if claimed is None:
            return
        epoch, slot = claimed
        held = Held(name, epoch)
        replica.jobs[name] = held
        outcome = "cancelled"
        log.info("daemon.slot_started", job=name, slot=slot.isoformat(), replica=replica.id)
        fence = SlotFence(self.mirror, replica.id, replica.ttl, held, slot)
        try:
            with anyio.CancelScope() as scope, running_in(fence):
                held.scope = scope
                try:
                    await body()
                    outcome = "ok"
                except Exception:
                    outcome = "error"
                    raise
        finally:
            replica.jobs.pop(name, None)
            with anyio.CancelScope(shield=True):
                done = await self.mirror.run_write(self._end, held, outcome)
            if done:
                log.info("daemon.slot_done", job=name, slot=slot.isoformat(), outcome=outcome)
            elif held.lost:
                log.warning("daemon.slot_lost", job=name, slot=slot.isoformat())

    async def catch_up(self, tg: anyio.abc.TaskGroup) -> None:
        """Start the jobs whose slot was left unfinished by a holder that died or stopped."""
        if self.replica.draining:
            return
        for name in await self.mirror.run(self._orphans):
            run = self.bodies.get(name)
            if run is not None and name not in self.replica.jobs:
                log.info("daemon.slot_resumed", job=name, replica=self.replica.id)
                tg.start_soon(run)

    def _claim(self, name: str, period: float) -> tuple[int, datetime] | None:
        with self.mirror.write() as session:
            return claim_slot(session, name, self.replica.id, period, self.replica.ttl)

    def _end(self, held: Held, outcome: str) -> bool:
        """Finished (ok or error): the slot is done. Cancelled: handed back, still unfinished."""
        params = {"name": held.name, "owner": self.replica.id, "epoch": held.epoch}
        with self.mirror.write() as session:
            if outcome == "cancelled":
                session.execute(_HAND_BACK, params)
                return False
            result = session.execute(_DONE, {**params, "outcome": outcome})
            return bool(getattr(result, "rowcount", 0))

    def _orphans(self) -> list[str]:
        with self.mirror.read() as session:
            return [row[0] for row in session.execute(_ORPHANS)]
