"""Pure planning of a page: normalise what the server listed, digest it, decide what to write.

No I/O here. A page is planned against what the mirror holds of its ids (read by the page writer,
``worker/sync/writer.py``, through ``worker/store/messages.py``), and only the rows that differ
are written: an unchanged message costs no write, and a full walk over an unchanged page needs no
write transaction at all. Comparison is by a digest of the bytes ``raw`` stores: the object
exactly as it was received, unknown fields and key order included (a mere reordering of keys is
told apart from a change by comparing the objects, :func:`settle`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from hashlib import sha256
from typing import Any, Literal, NamedTuple

from worker.errors import TransientError
from worker.jsontext import column_text, dumps, loads
from worker.store.messages import Incoming, NewRows, Stored, bind_new
from worker.sync.order import Place, TieOrder, place_ascending, place_descending

__all__ = ["Counts", "Direction", "Incoming", "NewPage", "Plan", "Stored", "digest_of"]

Direction = Literal["asc", "desc"]


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


def digest_of(raw: bytes) -> str:
    """What change detection compares: SHA-256 of the object's bytes as ``raw`` stores them,
    the first 128 bits in hex (migration 0003 set every stored row's to this).

    Over the bytes, not a key-sorted re-serialisation: that second serialisation was a third of
    the event loop's work per message. A server that sends the same object with its keys in
    another order gives another digest; :func:`settle` then compares the objects themselves.
    """
    return sha256(raw).hexdigest()[:32]


def prepare(obj: Any, thread_id: str) -> Incoming:
    """Check the fields the mirror relies on; a malformed object is a (retryable) bad answer.

    The hot path of every listing (once per message listed): exact type checks, no helpers.
    """
    if type(obj) is not dict:
        raise TransientError(f"thread {thread_id}: the server listed a non-object message")
    get = obj.get
    msg_id, created_at = get("id"), get("created_at")
    if type(msg_id) is not str or not msg_id:
        raise TransientError(f"thread {thread_id}: the server listed a message without an id")
    if type(created_at) is not int:  # bool is not int here, as it should be
        raise TransientError(f"thread {thread_id}: message {msg_id} has no integer created_at")
    return Incoming(
        msg_id,
        created_at,
        # Copied to a bytes object of its exact size: orjson's own answer keeps the buffer it
        # grew while writing, several times the text (pages waiting to be stored held 5x).
        # U+0000 is written as its escape: the bytes are text any database stores.
        raw := memoryview(dumps(obj)).tobytes(),
        digest_of(raw),
        column_text(get("role")),
        column_text(get("status")),
        column_text(get("run_id")),
        column_text(get("assistant_id")),
    )


@dataclass(slots=True)
class Plan:
    """The writes one page needs, computed without writing anything."""

    counts: Counts = field(default_factory=Counts)
    inserts: list[tuple[Incoming, int]] = field(default_factory=list)
    updates: list[tuple[Incoming, int]] = field(default_factory=list)
    last: Place | None = None
    # Updates counted as changed on their digest alone: (id, whether the rank moved too).
    suspects: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.inserts and not self.updates


def plan_page(
    stored: Mapping[str, Stored],
    page: Iterable[Incoming],
    *,
    direction: Direction,
    ties: TieOrder,
    prev: Place | None,
) -> Plan:
    """Rank each listed message after ``prev`` and decide what must be written."""
    plan = Plan(last=prev)
    for m in page:
        old = stored.get(m.id)
        old_rank = old.rank if old is not None and old.created_at == m.created_at else None
        if direction == "asc":
            rank = place_ascending(plan.last, m.created_at, old_rank)
        else:
            rank = place_descending(plan.last, m.created_at, old_rank, ties)
        plan.last = Place(m.created_at, rank)
        if old is None:
            plan.counts.added += 1
            plan.inserts.append((m, rank))
            continue
        content = old.digest != m.digest
        if old.deleted:
            plan.counts.restored += 1
        elif content:
            plan.counts.changed += 1
            plan.suspects.append((m.id, rank != old.rank))
        if content or old.deleted or rank != old.rank:
            plan.updates.append((m, rank))
    return plan


def settle(plan: Plan, stored_raw: Mapping[str, str]) -> None:
    """Drop from ``plan`` the changes that are only the server reordering an object's keys.

    Digests are over bytes, so the same object sent with its keys in another order looks
    changed; ``stored_raw`` (the stored objects of ``plan.suspects``) are compared as objects.
    Equal: not counted as changed, and not written unless its place moved. (Servers serialise
    consistently, so this reads nothing in practice; it keeps "an unchanged message causes no
    write" true for one that does not.)
    """
    incoming = {m.id: m for m, _ in plan.updates}
    same: set[str] = set()
    for mid, moved in plan.suspects:
        old = stored_raw.get(mid)
        if old is not None and loads(old) == loads(incoming[mid].raw):
            plan.counts.changed -= 1
            if not moved:
                same.add(mid)
    plan.suspects = []
    if same:
        plan.updates = [(m, rank) for m, rank in plan.updates if m.id not in same]


class NewPage(NamedTuple):
    """A page planned as wholly new, ready to go into the mirror as one INSERT."""

    counts: Counts
    last: Place | None
    rows: NewRows


def plan_new(
    thread_id: str,
    page: list[Incoming],
    *,
    direction: Direction,
    ties: TieOrder,
    prev: Place | None,
    now: datetime,
) -> NewPage | None:
    """Plan ``page`` as if none of it were stored, before it reaches the single writer."""
    if not page:
        return None
    plan = plan_page({}, page, direction=direction, ties=ties, prev=prev)
    return NewPage(plan.counts, plan.last, bind_new(thread_id, plan.inserts, now))
