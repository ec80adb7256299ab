"""Queueing local metadata edits and reading them back: `metadata set`, `metadata show`, counts.

An edit is validated against the service's limits on the map as it will be, then stored in the
same transaction as the wish (``desired``) and the remote map it was based on (``base``). A
violation raises before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session, col

from worker.errors import ConfigError
from worker.outbox.limits import apply_edit
from worker.outbox.merge import Conflict, as_metadata, changed_keys
from worker.outbox.models import OPEN_STATES, MetadataEdit
from worker.store import messages
from worker.store.db import Mirror
from worker.store.models import Message, utcnow


class UnknownMessageError(ConfigError):
    """The message is not in the mirror (or belongs to another thread): sync it first."""


@dataclass(frozen=True)
class PendingEdit:
    """What `metadata set` queued. ``state`` is ``pending``, or ``unchanged`` when there was no
    queued edit and this one leaves the map as the server last showed it (nothing is queued)."""

    thread_id: str
    message_id: str
    state: str
    base: dict[str, str]
    desired: dict[str, str]
    keys: list[str]
    revision: int


@dataclass(frozen=True)
class MetadataView:
    """Everything `metadata show` prints about one message."""

    thread_id: str
    message_id: str
    mirrored: dict[str, str] | None
    state: str  # clean | pending | conflicted | failed | applied
    desired: dict[str, str] | None = None
    base: dict[str, str] | None = None
    pending_keys: list[str] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    last_error: str | None = None
    attempts: int = 0
    updated_at: datetime | None = None
    applied_at: datetime | None = None


def _message(session: Session, thread_id: str, message_id: str) -> Message:
    msg = messages.get(session, message_id)
    if msg is None or msg.thread_id != thread_id:
        raise UnknownMessageError(
            f"message {message_id} of thread {thread_id} is not in the mirror; track the thread"
            " and run `threadsync sync` first"
        )
    return msg


def set_metadata(
    mirror: Mirror,
    thread_id: str,
    message_id: str,
    *,
    set: Mapping[str, str] | None = None,
    unset: Sequence[str] | None = None,
) -> PendingEdit:
    """Queue an edit of one message's metadata (coalescing with any edit not yet pushed)."""
    with mirror.write() as session:
        msg = _message(session, thread_id, message_id)
        if msg.deleted_at is not None:
            raise ConfigError(f"message {message_id} was deleted on the server; it cannot change")
        row = session.get(MetadataEdit, message_id)
        fresh = row is None or row.state == "applied"
        base = as_metadata(msg.meta) if fresh or row is None else as_metadata(row.base)
        current = base if fresh or row is None else as_metadata(row.desired)
        desired = apply_edit(current, base, set=set, unset=unset)
        now = utcnow()
        if desired == base and (row is None or fresh):
            # Nothing to change and nothing queued. (A queued edit that is reverted stays queued:
            # a push already in flight may be writing the old wish, and this one must follow it.)
            return PendingEdit(thread_id, message_id, "unchanged", base, desired, [], 0)
        if row is None:
            row = MetadataEdit(
                message_id=message_id, thread_id=thread_id, base=base, desired=desired
            )
            session.add(row)
        else:
            row.revision = 1 if fresh else row.revision + 1
            row.base, row.desired = base, desired
            row.state, row.attempts, row.last_error, row.conflict = "pending", 0, None, None
            row.updated_at, row.applied_at = now, None
            if fresh:
                row.created_at = now
        session.flush()
        return PendingEdit(
            thread_id,
            message_id,
            "pending",
            base,
            desired,
            changed_keys(base, desired),
            row.revision,
        )


def conflicts_of(stored: list[dict[str, Any]] | None) -> list[Conflict]:
    return [
        Conflict(str(c["key"]), c.get("base"), c.get("local"), c.get("remote"))
        for c in stored or []
    ]


def show_metadata(mirror: Mirror, thread_id: str, message_id: str) -> MetadataView:
    """The mirrored map, and the queued wish with its state, conflicts and last error."""
    with mirror.read() as session:
        msg = _message(session, thread_id, message_id)
        mirrored = as_metadata(msg.meta) if msg.meta is not None else None
        row = session.get(MetadataEdit, message_id)
        if row is None:
            return MetadataView(thread_id, message_id, mirrored, "clean")
        base, desired = as_metadata(row.base), as_metadata(row.desired)
        return MetadataView(
            thread_id,
            message_id,
            mirrored,
            row.state,
            desired=desired,
            base=base,
            pending_keys=[] if row.state == "applied" else changed_keys(base, desired),
            conflicts=conflicts_of(row.conflict),
            last_error=row.last_error,
            attempts=row.attempts,
            updated_at=row.updated_at,
            applied_at=row.applied_at,
        )


def edit_counts(session: Session) -> dict[str, int]:
    """Open edits by state: ``pending``, ``conflicted``, ``failed`` (for `status` and metrics)."""
    counts = dict.fromkeys(OPEN_STATES, 0)
    query = (
        select(col(MetadataEdit.state), func.count())
        .where(col(MetadataEdit.state).in_(OPEN_STATES))
        .group_by(col(MetadataEdit.state))
    )
    for state, n in session.execute(query):
        counts[state] = int(n)
    return counts
