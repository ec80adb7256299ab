"""The ledger's queries and state changes (blocking; callers run them in a worker thread).

What it reads of the mirror's messages and sync states comes from ``worker/store`` (``messages``,
``sync_state``): the ledger's own statements are on its tables only.

Changes take a session: the run commits them through the mirror's group commit (threads
migrating side by side share a transaction, one commit for many), and waits for the commit
before the request it prepares is sent (``planned`` -> ``sent``) or right after the answer
(``confirmed``) (under a daemon job's lease, each change in a transaction of its own that checks
the lease first: ``run.py``), so a process killed at any instant leaves a ledger that says
exactly which batch may or may not have landed.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson
from sqlalchemy import delete, select
from sqlmodel import Session, col

from worker.migrate.models import MigrateBatch, MigrateThread
from worker.store import messages, sync_state
from worker.store.db import Mirror
from worker.store.models import TrackedThread, utcnow


@dataclass(frozen=True)
class Candidate:
    """A mirrored thread that may be migrated."""

    thread_id: str
    eligible: bool
    reason: str = ""


@dataclass(frozen=True)
class Plan:
    """One thread's ledger as the run needs it."""

    row: MigrateThread
    batches: list[MigrateBatch]
    live: list[tuple[str, int]]  # (message id, created_at) of live messages, server order

    @property
    def confirmed(self) -> set[str]:
        return {m for b in self.batches if b.state == "confirmed" for m in ids_of(b)}

    @property
    def unsent(self) -> list[str]:
        done = self.confirmed
        return [m for m, _ in self.live if m not in done]


def ids_of(batch: MigrateBatch) -> list[str]:
    ids: list[str] = orjson.loads(batch.message_ids)
    return ids


def candidates(
    mirror: Mirror, thread_ids: Sequence[str] | None, since: int | None
) -> list[Candidate]:
    """Threads whose first sync finished (or that were imported), in the order they were added;
    ``thread_ids`` picks some (each named if it cannot go); ``since``: a message at or after."""
    with mirror.read() as session:
        rows = {r[0]: (r[1], r[2]) for r in sync_state.first_sync_done(session)}
        newest = messages.newest_live(session) if since is not None else {}
    out: list[Candidate] = []
    for thread_id in thread_ids if thread_ids is not None else list(rows):
        found = rows.get(thread_id)
        if found is None:
            out.append(Candidate(thread_id, False, "not in the mirror: `threadsync threads add`"))
            continue
        state, synced = found
        if state != "imported" and not synced:
            if thread_ids is None:
                continue  # not chosen by name: it goes once its first sync has finished
            out.append(Candidate(thread_id, False, "its first sync has not finished"))
        elif since is not None and newest.get(thread_id, -1) < since:
            if thread_ids is None:
                continue
            out.append(Candidate(thread_id, False, "no message at or after --since"))
        else:
            out.append(Candidate(thread_id, True))
    return out


def load_plan(mirror: Mirror, target: str, thread_id: str) -> Plan:
    """The thread's ledger row (a fresh, unsaved one before its first batch), batches and live
    messages in server order (one read)."""
    with mirror.read() as session:
        row = session.get(MigrateThread, (target, thread_id))
        if row is None:
            row = MigrateThread(target=target, thread_id=thread_id, migration_id=new_id())
        batches = list(
            session.scalars(
                select(MigrateBatch)
                .where(col(MigrateBatch.target) == target, col(MigrateBatch.thread_id) == thread_id)
                .order_by(col(MigrateBatch.seq))
            )
        )
        live = messages.live_in_order(session, thread_id)
    return Plan(row, batches, live)


def new_id() -> str:
    return uuid.uuid4().hex


def raws(mirror: Mirror, message_ids: Sequence[str]) -> list[bytes]:
    """The stored objects of ``message_ids``, in that order."""
    with mirror.read() as session:
        found = messages.raws_by_id(session, message_ids)
    return [found[m].encode() for m in message_ids]


def plan_batches(
    session: Session,
    row: MigrateThread,
    groups: Sequence[Sequence[str]],
    first_seq: int,
) -> tuple[MigrateThread, list[MigrateBatch]]:
    """One transaction: the thread's row (made on its first run), one ``planned`` batch per
    group of message ids numbered from ``first_seq``, the first of them already ``sent`` (its
    POST follows at once). Batches an earlier run left ``planned`` were never sent: they are
    dropped, their messages being among ``groups`` again (planned afresh, current policy)."""
    stored = session.get(MigrateThread, (row.target, row.thread_id))
    if stored is None:
        stored = MigrateThread(
            target=row.target, thread_id=row.thread_id, migration_id=row.migration_id
        )
        session.add(stored)
    session.execute(
        delete(MigrateBatch).where(
            col(MigrateBatch.target) == row.target,
            col(MigrateBatch.thread_id) == row.thread_id,
            col(MigrateBatch.state) == "planned",
        )
    )
    made = [
        MigrateBatch(
            target=row.target,
            thread_id=row.thread_id,
            seq=first_seq + i,
            state="sent" if i == 0 else "planned",
            message_ids=orjson.dumps(list(group)).decode(),
        )
        for i, group in enumerate(groups)
    ]
    session.add_all(made)
    session.flush()
    return stored, made


def mark_sent(session: Session, batch_id: int) -> None:
    batch = session.get_one(MigrateBatch, batch_id)
    batch.state, batch.updated_at = "sent", utcnow()


def unsend(session: Session, batch_id: int) -> None:
    """The batch is known not to have landed (refused, or settled as absent): planned again."""
    batch = session.get_one(MigrateBatch, batch_id)
    batch.state, batch.updated_at = "planned", utcnow()


@dataclass(frozen=True)
class Confirmation:
    batch_id: int
    item_ids: list[str] | None
    items: int
    dropped: int
    replaced: int
    conversation_id: str | None = None  # set by the create


def confirm(
    session: Session,
    target: str,
    thread_id: str,
    done: Confirmation,
    *,
    send_next: int | None = None,
    final: bool = False,
) -> MigrateThread:
    """The batch's items are in the conversation: record them and move the thread's anchor.

    In the same transaction (one commit per request, not two): ``send_next`` marks the next
    batch ``sent``, its POST following at once; ``final`` marks the thread migrated.
    """
    now = utcnow()
    if send_next is not None:
        following = session.get_one(MigrateBatch, send_next)
        following.state, following.updated_at = "sent", now
    batch = session.get_one(MigrateBatch, done.batch_id)
    batch.state, batch.updated_at = "confirmed", now
    if done.item_ids is not None:
        batch.item_ids = orjson.dumps(done.item_ids).decode()
    row = session.get_one(MigrateThread, (target, thread_id))
    if done.conversation_id is not None:
        row.conversation_id = done.conversation_id
        row.migrated_at = row.migrated_at or now
    row.items += done.items
    if done.item_ids:
        row.last_item_id = done.item_ids[-1]
    elif done.items:
        row.last_item_id = None  # ids unknown: a later settle counts items instead
    row.dropped += done.dropped
    row.replaced += done.replaced
    row.updated_at = now
    if final:
        row.state, row.last_error = "migrated", None
    session.flush()
    return row


def finish(session: Session, target: str, thread_id: str, error: str | None) -> None:
    row = session.get(MigrateThread, (target, thread_id))
    if row is None:
        return
    row.state = "failed" if error else ("migrated" if row.conversation_id else "pending")
    row.last_error = error
    row.updated_at = utcnow()


def lost_create(session: Session, target: str, thread_id: str, batch_id: int) -> None:
    """A create whose answer was lost, on a target that cannot list conversations: it may have
    made a conversation nobody can find again (no list endpoint; its id was in the lost answer).

    Such targets create conversations empty, so that one, if it exists, holds no item. The
    attempt is kept as a ``lost`` batch (``created_at``: when the create was sent, so about when
    the orphan would have been made), counted on the thread, and the create is planned again
    under a new migration id.
    """
    now = utcnow()
    row = session.get_one(MigrateThread, (target, thread_id))
    row.lost_creates += 1
    row.migration_id = new_id()
    batch = session.get_one(MigrateBatch, batch_id)
    session.add(
        MigrateBatch(
            target=target,
            thread_id=thread_id,
            seq=batch.seq,
            state="lost",
            message_ids=batch.message_ids,
            created_at=batch.updated_at,
            updated_at=now,
        )
    )
    batch.state, batch.updated_at = "planned", now


def lost_creates(mirror: Mirror, target: str) -> dict[str, list[datetime]]:
    """Per thread, when each create whose answer was lost was sent, oldest first."""
    with mirror.read() as session:
        found: dict[str, list[datetime]] = {}
        for thread_id, sent in session.execute(
            select(col(MigrateBatch.thread_id), col(MigrateBatch.created_at))
            .where(col(MigrateBatch.target) == target, col(MigrateBatch.state) == "lost")
            .order_by(col(MigrateBatch.created_at), col(MigrateBatch.id))
        ):
            found.setdefault(thread_id, []).append(sent)
    return found


def rows(mirror: Mirror, target: str) -> list[MigrateThread]:
    """The target's ledger rows, threads in the order they were added to the mirror."""
    with mirror.read() as session:
        return list(
            session.scalars(
                select(MigrateThread)
                .join(
                    TrackedThread,
                    col(TrackedThread.thread_id) == col(MigrateThread.thread_id),
                    isouter=True,
                )
                .where(col(MigrateThread.target) == target)
                .order_by(col(TrackedThread.added_at), col(MigrateThread.thread_id))
            )
        )


def confirmed_batches(session: Session, target: str, thread_id: str) -> list[MigrateBatch]:
    return list(
        session.scalars(
            select(MigrateBatch)
            .where(
                col(MigrateBatch.target) == target,
                col(MigrateBatch.thread_id) == thread_id,
                col(MigrateBatch.state) == "confirmed",
            )
            .order_by(col(MigrateBatch.seq))
        )
    )


def stamp(when: datetime | None) -> str:
    return "" if when is None else when.strftime("%Y-%m-%dT%H:%M:%SZ")


def live_counts(mirror: Mirror) -> dict[str, int]:
    """Live messages per thread in the mirror."""
    with mirror.read() as session:
        return messages.live_counts(session)
