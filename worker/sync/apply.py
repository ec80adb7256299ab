"""Applying one page of listed messages to the mirror, inside the caller's transaction.

This is the hot path of every sync: one SELECT of the page's ids, then only the rows that differ
are written (an unchanged message costs no write). Comparison is by a digest of the canonical JSON
(sorted keys), so a server that reorders keys does not look like a change, while ``raw`` keeps the
object exactly as it was received.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
from sqlalchemy import bindparam, select, update
from sqlmodel import Session, col

from worker.errors import TransientError
from worker.store.models import Message
from worker.sync.order import Place, TieOrder, place_ascending, place_descending

Direction = Literal["asc", "desc"]
_TABLE = Message.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message as listed by the server, ready to compare and store."""

    id: str
    created_at: int
    obj: dict[str, Any]
    raw: str
    digest: str


@dataclass(slots=True)
class Counts:
    """What a page, a thread pass or a run did to the mirror."""

    added: int = 0
    changed: int = 0
    deleted: int = 0
    restored: int = 0

    def __iadd__(self, other: Counts) -> Counts:
        self.added += other.added
        self.changed += other.changed
        self.deleted += other.deleted
        self.restored += other.restored
        return self

    @property
    def writes(self) -> int:
        return self.added + self.changed + self.deleted + self.restored


def digest_of(obj: dict[str, Any]) -> str:
    return hashlib.blake2b(
        orjson.dumps(obj, option=orjson.OPT_SORT_KEYS), digest_size=16
    ).hexdigest()


def prepare(obj: Any, thread_id: str) -> Incoming:
    """Check the fields the mirror relies on; a malformed object is a (retryable) bad answer."""
    if not isinstance(obj, dict):
        raise TransientError(f"thread {thread_id}: the server listed a non-object message")
    msg_id, created_at = obj.get("id"), obj.get("created_at")
    if not isinstance(msg_id, str) or not msg_id:
        raise TransientError(f"thread {thread_id}: the server listed a message without an id")
    if not isinstance(created_at, int) or isinstance(created_at, bool):
        raise TransientError(f"thread {thread_id}: message {msg_id} has no integer created_at")
    return Incoming(msg_id, created_at, obj, orjson.dumps(obj).decode(), digest_of(obj))


@dataclass(frozen=True, slots=True)
class Stored:
    id: str
    created_at: int
    rank: int
    digest: str
    deleted: bool


def load_stored(session: Session, ids: Sequence[str]) -> dict[str, Stored]:
    if not ids:
        return {}
    rows = session.execute(
        select(
            col(Message.id),
            col(Message.created_at),
            col(Message.tie_rank),
            col(Message.digest),
            col(Message.deleted_at),
        ).where(col(Message.id).in_(ids))
    )
    return {r[0]: Stored(r[0], r[1], r[2], r[3], r[4] is not None) for r in rows}


def _columns(m: Incoming) -> dict[str, Any]:
    obj = m.obj
    meta = obj.get("metadata")
    return {
        "created_at": m.created_at,
        "role": _str(obj.get("role")),
        "status": _str(obj.get("status")),
        "run_id": _str(obj.get("run_id")),
        "assistant_id": _str(obj.get("assistant_id")),
        "metadata": meta if isinstance(meta, dict) else None,
        "raw": m.raw,
        "digest": m.digest,
    }


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def apply_page(
    session: Session,
    thread_id: str,
    page: Iterable[Incoming],
    *,
    direction: Direction,
    ties: TieOrder,
    prev: Place | None,
    now: datetime,
) -> tuple[Counts, Place | None]:
    """Upsert a page walked in ``direction``; return what changed and the walk's new position."""
    msgs = list(page)
    stored = load_stored(session, [m.id for m in msgs])
    counts = Counts()
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for m in msgs:
        old = stored.get(m.id)
        old_rank = old.rank if old is not None and old.created_at == m.created_at else None
        if direction == "asc":
            rank = place_ascending(prev, m.created_at, old_rank)
        else:
            rank = place_descending(prev, m.created_at, old_rank, ties)
        prev = Place(m.created_at, rank)
        if old is None:
            counts.added += 1
            inserts.append(
                {
                    "id": m.id,
                    "thread_id": thread_id,
                    "tie_rank": rank,
                    "first_seen_at": now,
                    "updated_at": now,
                    "deleted_at": None,
                    **_columns(m),
                }
            )
            continue
        content = old.digest != m.digest
        if old.deleted:
            counts.restored += 1
        elif content:
            counts.changed += 1
        if content or old.deleted or rank != old.rank:
            updates.append({"_id": m.id, "tie_rank": rank, "updated_at": now, **_columns(m)})
    if inserts:
        session.execute(_TABLE.insert(), inserts)
    if updates:
        values: dict[str, Any] = {k: bindparam(k) for k in updates[0] if k != "_id"}
        session.execute(
            update(_TABLE).where(_TABLE.c.id == bindparam("_id")).values(deleted_at=None, **values),
            updates,
            execution_options={"synchronize_session": False},
        )
    return counts, prev


def sweep_deleted(
    session: Session,
    thread_id: str,
    *,
    low: int | None,
    high: int | None,
    seen: set[str],
    now: datetime,
) -> int:
    """Tombstone live messages with ``low <= created_at < high`` that a full walk did not list."""
    query = select(col(Message.id)).where(
        col(Message.thread_id) == thread_id, col(Message.deleted_at).is_(None)
    )
    if low is not None:
        query = query.where(col(Message.created_at) >= low)
    if high is not None:
        query = query.where(col(Message.created_at) < high)
    gone = [row[0] for row in session.execute(query) if row[0] not in seen]
    if gone:
        session.execute(
            update(_TABLE)
            .where(_TABLE.c.id.in_(gone))
            .values(deleted_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    return len(gone)


def mark_deleted(session: Session, message_id: str, now: datetime) -> int:
    result = session.execute(
        update(_TABLE)
        .where(_TABLE.c.id == message_id, _TABLE.c.deleted_at.is_(None))
        .values(deleted_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
