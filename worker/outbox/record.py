"""The push's bookkeeping in the mirror: which edits to send, and what became of each.

Every outcome is written with a check of the edit's ``revision``: when the user edited the message
again while the push was talking to the server, the newer wish is kept (rebased onto what the
server now holds) instead of being marked done or failed.

In replicas mode the push runs under its job's lease (``worker/daemon/slots.py``): a ``guard``
then opens every transaction here, so a push whose lease was lost records nothing, and
:func:`still_open` checks the lease and the edit's version right before each modify.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlmodel import Session, col

from worker.outbox.merge import Conflict, as_metadata, merge3
from worker.outbox.models import MetadataEdit
from worker.store.db import Mirror, lock_threads
from worker.store.models import utcnow
from worker.sync.plan import prepare
from worker.sync.writer import write_returned


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One edit as the push read it."""

    thread_id: str
    message_id: str
    base: dict[str, str]
    desired: dict[str, str]
    revision: int
    attempts: int


def load_open(mirror: Mirror, *, retry_failed: bool) -> list[Snapshot]:
    """Edits to push now: pending and conflicted ones (a policy may settle a held conflict, or
    the other side may have moved), plus failed ones when asked to retry them."""
    with mirror.write() as session:
        if retry_failed:
            session.execute(
                update(MetadataEdit)
                .where(col(MetadataEdit.state) == "failed")
                .values(state="pending", attempts=0, last_error=None, updated_at=utcnow())
            )
        rows = session.execute(
            select(MetadataEdit)
            .where(col(MetadataEdit.state).in_(("pending", "conflicted")))
            .order_by(col(MetadataEdit.updated_at), col(MetadataEdit.message_id))
        ).scalars()
        return [
            Snapshot(
                r.thread_id,
                r.message_id,
                as_metadata(r.base),
                as_metadata(r.desired),
                r.revision,
                r.attempts,
            )
            for r in rows
        ]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to record for one edit: ``applied`` (with the server's object), ``conflicted``,
    ``failed``, or ``pending`` (deferred to a later push)."""

    snap: Snapshot
    state: str
    attempts: int
    obj: dict[str, Any] | None = None
    error: str | None = None
    conflicts: tuple[Conflict, ...] = ()


Guard = Callable[[Session], None]  # raises (worker.errors.WriteRefused) when the lease is lost


def still_open(mirror: Mirror, snap: Snapshot, guard: Guard) -> bool:
    """Right before a modify, in a transaction of its own: the ``guard`` holds (it raises
    otherwise), and the edit is still the version the push read. False: edited meanwhile, or
    no longer open: the modify is not sent (the next push sends the newer wish)."""
    with mirror.write(small=True) as session:
        guard(session)
        row = session.get(MetadataEdit, snap.message_id)
        return (
            row is not None
            and row.revision == snap.revision
            and row.state in ("pending", "conflicted")
        )


def store_outcomes(mirror: Mirror, outcomes: Sequence[Outcome], guard: Guard | None = None) -> None:
    """Record a batch of outcomes in one transaction (a push writes as its answers arrive);
    under ``guard``, only while it holds (its exception rolls the whole batch back)."""
    with mirror.write() as session:
        # Message rows are written under their threads' locks, as a sync writes them; those
        # advisory locks come before the guard's job_slot row (the lock order in
        # worker/daemon/slots.py): the other way round deadlocks with a page write and a renewal.
        lock_threads(session, (o.snap.thread_id for o in outcomes if o.obj is not None))
        if guard is not None:
            guard(session)
        for outcome in outcomes:
            if outcome.obj is not None:
                _store_truth(session, outcome.snap, outcome.obj, outcome.attempts)
            else:
                _store_other(session, outcome)


def store_truth(mirror: Mirror, snap: Snapshot, obj: dict[str, Any], attempts: int) -> None:
    """The server holds the wish: its message object becomes the mirror's truth, the edit done."""
    store_outcomes(mirror, [Outcome(snap, "applied", attempts, obj)])


def _store_truth(session: Session, snap: Snapshot, obj: dict[str, Any], attempts: int) -> None:
    remote = as_metadata(obj.get("metadata"))
    now = utcnow()
    # Written as a sync writes a listed message (every column from the object, deleted_at
    # cleared): the server's answer is the message as it now is.
    write_returned(session, snap.thread_id, prepare(obj, snap.thread_id), now)
    row = session.get(MetadataEdit, snap.message_id)
    if row is None:
        return
    if row.revision == snap.revision:
        row.state, row.base, row.desired = "applied", remote, remote
        row.applied_at, row.last_error, row.conflict = now, None, None
    else:
        # Edited meanwhile: keep the user's newer changes on top of what the server holds.
        newer = merge3(snap.desired, as_metadata(row.desired), remote).resolved("local")
        row.base, row.desired, row.state = remote, newer, "pending"
    row.attempts, row.updated_at = attempts, now


def _store_other(session: Session, outcome: Outcome) -> None:
    """A conflicted, failed or still-pending (deferred) edit, unless edited meanwhile."""
    row = session.get(MetadataEdit, outcome.snap.message_id)
    if row is None or row.revision != outcome.snap.revision:
        return
    row.state, row.attempts, row.last_error = outcome.state, outcome.attempts, outcome.error
    row.conflict = [
        {"key": c.key, "base": c.base, "local": c.local, "remote": c.remote}
        for c in outcome.conflicts
    ] or None
    row.updated_at = utcnow()
