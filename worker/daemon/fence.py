"""Fencing: a write for a thread commits only while this replica's claim on it still holds.

Every claim gives the thread a new ``lease_epoch`` (see :func:`worker.daemon.due.claim_leases`).
:func:`check_lease` runs inside the write's own transaction: a guarded ``UPDATE ... WHERE
thread_id = :t AND lease_owner = :o AND lease_epoch = :e`` that also extends the lease (database
clock). It takes the row's lock until commit, so a takeover cannot slip between the check and the
write; no row means the lease was lost, :class:`LeaseLost` is raised and the transaction (or its
savepoint) rolls back.

A :class:`Fence` is what the dispatcher hands a batch's passes: the epochs it claimed, and a local
trust window (monotonic clock, River's rule) so that a replica that could not renew, or was paused
past its TTL, sends no more requests for those threads; the database check is the authority.

A periodic job's remote side effects (a push's metadata modify, a backup's publish) are fenced by
the job's own lease in ``job_slot`` the same way: :class:`SlotLost` is what that check raises
(``worker/daemon/slots.py``, :class:`~worker.daemon.slots.SlotFence`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import func, update
from sqlmodel import Session, col

from worker.errors import WriteRefused
from worker.store.models import TrackedThread


class LeaseLost(WriteRefused):
    """This replica no longer holds the thread: another one took it over (or it was released)."""

    def __init__(self, thread_id: str) -> None:
        super().__init__(f"the lease on thread {thread_id} was lost to another replica")
        self.thread_id = thread_id


class SlotLost(WriteRefused):
    """This replica no longer holds a periodic job's lease: the job's remote act must not happen,
    and what it did so far is not recorded (another replica may be running that slot)."""

    def __init__(self, job: str) -> None:
        super().__init__(f"the lease on the periodic job {job} was lost to another replica")
        self.job = job


def check_lease(session: Session, thread_id: str, owner: str, epoch: int, ttl: float) -> None:
    """Inside a write transaction: raise :class:`LeaseLost` unless ``(owner, epoch)`` still holds
    ``thread_id``; when it does, its lease now lasts at least ``ttl`` more seconds."""
    holds = (
        col(TrackedThread.thread_id) == thread_id,
        col(TrackedThread.lease_owner) == owner,
        col(TrackedThread.lease_epoch) == epoch,
    )
    if session.get_bind().dialect.name == "postgresql":
        until = func.greatest(
            col(TrackedThread.lease_until), func.now() + func.make_interval(0, 0, 0, 0, 0, 0, ttl)
        )
        statement = update(TrackedThread).where(*holds).values(lease_until=until)
    else:  # replicas mode is PostgreSQL only; on SQLite the check alone (one writer anyway)
        statement = update(TrackedThread).where(*holds).values(lease_epoch=epoch)
    result = session.execute(statement.returning(col(TrackedThread.thread_id)))
    if result.first() is None:
        raise LeaseLost(thread_id)


@dataclass(eq=False)  # hashed by identity: the replica keeps its live fences in a set
class Fence:
    """One batch's claims: thread -> epoch, and until when (monotonic) they can be trusted."""

    owner: str
    ttl: float
    epochs: dict[str, int]
    trusted_until: float
    clock: Callable[[], float] = time.monotonic
    lost: set[str] = field(default_factory=set)
    # Set before the batch settles (reschedules and releases): the renewal then neither renews
    # these leases nor calls the ones the settling gave back "lost".
    closed: bool = False

    def guard(self, session: Session, thread_id: str) -> None:
        """In the write transaction of a page (or of the pass's closing state)."""
        if thread_id in self.lost or thread_id not in self.epochs:
            raise LeaseLost(thread_id)
        try:
            check_lease(session, thread_id, self.owner, self.epochs[thread_id], self.ttl)
        except LeaseLost:
            self.lost.add(thread_id)
            raise

    def holds(self, session: Session, thread_id: str) -> bool:
        """:meth:`guard` as a yes/no, for a write that should simply not happen when lost."""
        try:
            self.guard(session, thread_id)
        except LeaseLost:
            return False
        return True

    def ensure(self, thread_id: str) -> None:
        """Before a request for ``thread_id``: refuse once the lease is known lost or untrusted
        (renewals failing, or this process paused past its TTL)."""
        if thread_id in self.lost or self.clock() >= self.trusted_until:
            raise LeaseLost(thread_id)

    def held(self) -> dict[str, int]:
        return {t: e for t, e in self.epochs.items() if t not in self.lost}
