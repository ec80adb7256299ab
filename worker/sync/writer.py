"""The page writer: the one way a sync (and a push, and an import) writes messages and a cursor.

Each operation is named for what a walk does, instead of mode flags: a page that should be wholly
new (:meth:`PageWriter.insert_new`), a page applied against what is stored
(:meth:`PageWriter.apply`), a full walk's page written only if it changes something
(:meth:`PageWriter.apply_if_changed`), a message re-fetched (:meth:`PageWriter.refresh`), a
cursor moved alone (:meth:`PageWriter.move`), a message gone (:meth:`PageWriter.tombstone`), and
the pass's closing state (:meth:`PageWriter.close`).

Each page's rows and the cursor advance commit in one transaction: killed at any instant, a rerun
loses nothing and duplicates nothing. The transaction is grouped (``Mirror.write_grouped``): the
pages other passes have ready by then share its commit. ``guard``, when given, runs inside every
write transaction of the pass, first, before its statements (and so before its commit): raising
there writes nothing of that page, on either backend, and fails the pass (a lease or fencing
check; see :data:`Guard`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from sqlmodel import Session

from worker.errors import WriteRefused
from worker.store import messages, sync_state
from worker.store.db import Mirror
from worker.store.models import SyncState
from worker.sync.census import Census
from worker.sync.order import Place, TieOrder
from worker.sync.plan import (
    Counts,
    Direction,
    Incoming,
    NewPage,
    Plan,
    plan_new,
    plan_page,
    settle,
)

# Run first in each write transaction of a pass, in that transaction (so what it checks holds
# until the commit); raising writes nothing of the piece and fails the pass.
Guard = Callable[[Session], None]


class Lease(Protocol):
    """Who may touch a thread (replicas mode: ``worker.daemon.fence.Fence``): the run builds each
    pass's :data:`Guard` and its pre-request check from it."""

    def guard(self, session: Session, thread_id: str) -> None:
        """In a write transaction, first: raise :class:`WriteRefused` unless still held."""

    def holds(self, session: Session, thread_id: str) -> bool:
        """:meth:`guard` as a yes/no, for a write that should simply not happen when refused."""

    def ensure(self, thread_id: str) -> None:
        """Before a request: raise :class:`WriteRefused` once the thread is known lost."""


Sweep = tuple[int | None, int | None, frozenset[str]]  # a full walk's window: low, high, seen


@dataclass(slots=True)
class Cursor:
    """What a walk moves with each page it stores (the rest of the state changes at the end).

    The pass keeps its own copy: it is the only writer of its thread's state while it runs (a
    thread is in one run at a time), so a page's advance is one UPDATE of the columns that moved,
    computed here, with no read of the row first.
    """

    initial_done: bool
    initial_after: str | None
    high_water_id: str | None
    last_full_at: datetime | None

    @classmethod
    def of(cls, state: SyncState) -> Cursor:
        return cls(state.initial_done, state.initial_after, state.high_water_id, state.last_full_at)

    def moved(self, advance: Callable[[Cursor], None]) -> tuple[Cursor, dict[str, Any]]:
        """The cursor after ``advance``, and the columns that changed."""
        after = replace(self)
        advance(after)
        changed = {
            name: value
            for name in sync_state.CURSOR
            if (value := getattr(after, name)) != getattr(self, name)
        }
        return after, changed


Advance = Callable[[Cursor], None]


def write_page(
    session: Session,
    thread_id: str,
    msgs: Sequence[Incoming],
    *,
    direction: Direction,
    ties: TieOrder,
    prev: Place | None,
    now: datetime,
    sweep: Sweep | None = None,
) -> tuple[Counts, Place | None, list[str]]:
    """Plan ``msgs`` against what is stored and write what differs, in the session's
    transaction; with ``sweep``, tombstone the window's live messages the walk did not list.
    Returns what changed, where the page ends, and the ids tombstoned."""
    plan, gone = _plan(session, thread_id, msgs, direction, ties, prev, sweep)
    if not plan.empty:
        messages.write(session, thread_id, plan.inserts, plan.updates, now)
    plan.counts.deleted += messages.tombstone(session, gone, now)
    return plan.counts, plan.last, gone


def write_returned(session: Session, thread_id: str, msg: Incoming, now: datetime) -> Counts:
    """A message the server returned for one the mirror holds (a push's answer), written as a
    sync writes a listed message it holds: every column from the object, in its stored place,
    ``deleted_at`` cleared. A message the mirror does not hold is left out (a push only edits
    mirrored messages)."""
    plan, _ = _plan(session, thread_id, [msg], "asc", "reverse", None, None)
    if plan.inserts:
        return Counts()
    if plan.updates:
        messages.write(session, thread_id, [], plan.updates, now)
    return plan.counts


def _plan(
    session: Session,
    thread_id: str,
    msgs: Sequence[Incoming],
    direction: Direction,
    ties: TieOrder,
    prev: Place | None,
    sweep: Sweep | None,
) -> tuple[Plan, list[str]]:
    stored = messages.load_stored(session, [m.id for m in msgs])
    plan = plan_page(stored, msgs, direction=direction, ties=ties, prev=prev)
    if plan.suspects:
        settle(plan, messages.stored_raw(session, [mid for mid, _ in plan.suspects]))
    gone: list[str] = []
    if sweep is not None:
        low, high, seen = sweep
        gone = messages.unlisted(session, thread_id, low=low, high=high, seen=set(seen))
    return plan, gone


@dataclass(slots=True, eq=False)
class _Closing:
    """A pass's closing state, queued for a grouped write transaction."""

    thread_id: str
    sets: dict[str, Any]
    adds: dict[str, int]
    guard: Guard | None
    # What the guard raised (other than a refusal) among other closing states: the grouped
    # write then runs each alone, and this one fails with it, its guard not asked twice.
    failure: Exception | None = None

    def allowed(self, session: Session) -> bool:
        """The pass's guard, first in the transaction: False (write nothing) if it refuses."""
        if self.failure is not None:
            raise self.failure
        if self.guard is None:
            return True
        try:
            self.guard(session)
        except WriteRefused:
            return False  # the thread's new holder writes its state; nobody waits for this
        except Exception as exc:
            self.failure = exc
            raise
        return True

    def __call__(self, session: Session) -> None:
        """Alone (in a savepoint of its own on PostgreSQL)."""
        if self.allowed(session):
            sync_state.close(session, self.thread_id, self.sets, self.adds)


def close_together(session: Session, closings: list[_Closing]) -> None:
    """Several passes' closing states in one grouped transaction (``Mirror.queue_grouped``'s
    ``together``): each guard first, in queue order, then the states whose guard let them
    through in one go (:func:`worker.store.sync_state.close_many`). A pass whose lease was lost
    writes nothing, exactly as alone. Any other failure raises: the grouped write then rolls
    this back and writes each closing state alone."""
    allowed = [c for c in closings if c.allowed(session)]
    sync_state.close_many(session, [(c.thread_id, c.sets, c.adds) for c in allowed])


class PageWriter:
    """One pass's writes to its thread: pages with their cursor advance, and the closing state."""

    def __init__(
        self,
        mirror: Mirror,
        thread_id: str,
        *,
        ties: Callable[[], TieOrder],
        now: Callable[[], datetime],
        counts: Counts | None = None,
        guard: Guard | None = None,
    ) -> None:
        self.mirror = mirror
        self.thread_id = thread_id
        self._ties = ties
        self._now = now
        self._guard = guard
        self.cursor = Cursor(False, None, None, None)  # set from the state when the pass begins
        self.counts = Counts() if counts is None else counts  # the pass's, added to per page
        self.page_writes = 0  # write transactions of pages (a full walk's memo needs none)
        # Cursor columns moved by a page that wrote nothing else: written with the closing state.
        self.late: dict[str, Any] = {}
        # Messages this pass saw final or gone (so not to re-fetch), and listed in progress.
        self.seen_done: set[str] = set()
        self.fresh: set[str] = set()

    # -- the operations ------------------------------------------------------------------------

    async def insert_new(
        self, msgs: list[Incoming], direction: Direction, prev: Place | None, advance: Advance
    ) -> Place | None:
        """A page that should hold only messages the mirror has not stored (a first sync, a
        forward walk): on SQLite planned before the writer and tried as one INSERT without
        reading (``messages.insert_new``); the ordinary way if that finds one stored."""
        self._listed(msgs)
        fresh = None
        if self.mirror.is_sqlite:  # planned here: the writer's time is the scarce one
            fresh = plan_new(
                self.thread_id, msgs, direction=direction, ties=self._ties(), prev=prev,
                now=self._now(),
            )  # fmt: skip
        return await self._write(msgs, direction, prev, advance, new=fresh)

    async def apply(
        self,
        msgs: list[Incoming],
        direction: Direction,
        prev: Place | None,
        advance: Advance,
        *,
        sweep: Sweep | None = None,
    ) -> Place | None:
        """A page planned against what is stored, in its write transaction; with ``sweep``, the
        window's live messages it does not list are tombstoned with it."""
        self._listed(msgs)
        return await self._write(msgs, direction, prev, advance, sweep=sweep)

    async def apply_if_changed(
        self,
        msgs: list[Incoming],
        prev: Place | None,
        advance: Advance,
        *,
        sweep: Sweep,
        census: Census | None,
        late: bool,
    ) -> Place | None:
        """A full walk's page (oldest-first): planned first, from the walk's ``census`` when it
        has one or else in a read transaction (which never waits for SQLite's single writer),
        and written only if something differs. With ``late`` the cursor's advance of a page
        that changes nothing goes with the pass's closing state."""
        self._listed(msgs)
        plan, gone = await self._check(msgs, prev, sweep, census)
        if plan.empty and not gone:
            if late:
                self.cursor, ended = self.cursor.moved(advance)
                self.late.update(ended)
            return plan.last
        return await self._write(msgs, "asc", prev, advance, sweep=sweep)

    async def refresh(self, msg: Incoming) -> None:
        """A message re-fetched alone; most are still being written, unchanged: no write then."""
        self._listed([msg])
        plan, _ = await self._check([msg], None, None, None)
        if not plan.empty:
            await self._write([msg], "asc", None, None)

    async def move(self, advance: Advance) -> None:
        """Move the cursor alone (in a page transaction of its own)."""
        await self._write([], "asc", None, advance)

    def move_late(self, advance: Advance) -> None:
        """Move the cursor with the closing state (a walk whose end wrote nothing)."""
        self.cursor, ended = self.cursor.moved(advance)
        self.late.update(ended)

    async def tombstone(self, message_id: str) -> None:
        now = self._now()

        def gone(session: Session) -> int:
            self._guarded(session)
            return messages.tombstone(session, [message_id], now)

        def alone() -> int:
            with self.mirror.write() as session:
                return gone(session)

        self.counts.deleted += await self.mirror.run_write(alone)

    def close(self, sets: dict[str, Any], adds: dict[str, int]) -> None:
        """The pass's closing state: one UPDATE, no read (the pass created the row when it
        began). Not waited for: it rides with another pass's next page, or with the run's final
        flush, together with the other passes' closing states of that transaction
        (:func:`close_together`). Alone, one statement: on SQLite it needs no savepoint, it
        fails whole or not at all."""
        if self.late:  # a walk's end that wrote nothing else
            adds["pages"] = 1
            sets.update(self.late)
        closing = _Closing(self.thread_id, sets, adds, self._guard)
        self.mirror.queue_grouped(
            closing,
            isolated=not self.mirror.is_sqlite,
            thread_id=self.thread_id,
            together=close_together,
        )

    # -- the plumbing --------------------------------------------------------------------------

    def _listed(self, msgs: list[Incoming]) -> None:
        self.fresh.update(m.id for m in msgs if m.status == "in_progress")
        self.seen_done.update(m.id for m in msgs if m.status != "in_progress")

    def _guarded(self, session: Session) -> None:
        if self._guard is not None:
            self._guard(session)

    async def _check(
        self,
        msgs: list[Incoming],
        prev: Place | None,
        sweep: Sweep | None,
        census: Census | None,
    ) -> tuple[Plan, list[str]]:
        ties = self._ties()
        if census is not None:
            plan = plan_page(census.stored, msgs, direction="asc", ties=ties, prev=prev)
            gone = census.unlisted(low=sweep[0], high=sweep[1], seen=sweep[2]) if sweep else []
            return plan, gone

        def read() -> tuple[Plan, list[str]]:
            with self.mirror.read() as session:
                return _plan(session, self.thread_id, msgs, "asc", ties, prev, sweep)

        return await self.mirror.run(read)

    async def _write(
        self,
        msgs: list[Incoming],
        direction: Direction,
        prev: Place | None,
        advance: Advance | None,
        *,
        sweep: Sweep | None = None,
        new: NewPage | None = None,
    ) -> Place | None:
        now, ties, thread_id = self._now(), self._ties(), self.thread_id
        cursor, moved = self.cursor, None
        if advance is not None:
            cursor, moved = self.cursor.moved(advance)

        def work(session: Session) -> tuple[Counts, Place | None, list[str]]:
            self._guarded(session)
            if new is not None and messages.insert_new(session, new.rows):
                counts, last, gone = new.counts, new.last, list[str]()
            else:
                counts, last, gone = write_page(
                    session, thread_id, msgs, direction=direction, ties=ties, prev=prev,
                    now=now, sweep=sweep,
                )  # fmt: skip
            if moved is not None:
                sync_state.advance(session, thread_id, moved)
            return counts, last, gone

        # On SQLite without a savepoint of its own: if ``work`` fails half-way, what it wrote is
        # rows upserted by id (and tombstones), committed without the cursor advance, which
        # comes last; the next pass lists the page again and converges, duplicating nothing.
        # (PostgreSQL aborts the whole transaction at a failed statement: a savepoint there is
        # what keeps the other pieces.)
        self.page_writes += 1
        counts, last, gone = await self.mirror.write_grouped(
            work, isolated=not self.mirror.is_sqlite, thread_id=thread_id
        )
        self.cursor = cursor  # committed
        self.seen_done.update(gone)
        self.counts += counts
        return last
