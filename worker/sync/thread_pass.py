"""One thread's pass, top-down: choose a walk, run it, map its errors, record the outcome.

The walks are units of their own, each over the same two seams (the page feed,
``worker/sync/feed.py``, and the page writer, ``worker/sync/writer.py``):

- the **first sync** (``first_sync.py``) walks newest-first, resumable from its cursor;
- an **ordinary pass** (``forward.py``) probes for the newest message and walks forward from the
  high-water mark when the thread is not idle;
- the **full walk** (``full_walk.py``) compares the whole thread, oldest-first, with the mirror.

A walk that cannot go on from its cursor raises :class:`~worker.sync.walking.Rescan`, and the
pass walks the thread in full instead. Messages stored as still being written are fetched again at
the end of every pass until they are final.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any, NamedTuple

from worker.client import ApiClient
from worker.errors import (
    ApiError,
    AuthError,
    NotFoundError,
    ParkedError,
    PermanentError,
    ThreadsyncError,
    TransientError,
    WriteRefused,
)
from worker.jsontext import column_text
from worker.logs import get_logger
from worker.store import messages, sync_state
from worker.store.db import Mirror
from worker.store.models import SyncState, utcnow
from worker.sync.feed import Refetches, Wire, refetching
from worker.sync.first_sync import first_sync
from worker.sync.forward import ordinary
from worker.sync.full_walk import full_walk
from worker.sync.memo import CensusAhead, MemoSlot
from worker.sync.outcome import ThreadOutcome, cause_of, describe, raised_at, unexpected
from worker.sync.plan import prepare
from worker.sync.ties import TieConvention
from worker.sync.walking import Rescan, Walk
from worker.sync.writer import Cursor, Guard, Lease, PageWriter

log = get_logger()


class Known(NamedTuple):
    """A thread's sync state (None before its first pass) and its messages stored in progress."""

    state: SyncState | None
    busy: set[str]


class ThreadPass:
    """One pass over one thread; create a new one for every pass."""

    def __init__(
        self,
        client: ApiClient,
        mirror: Mirror,
        thread_id: str,
        *,
        ties: TieConvention,
        page_limit: int = 100,
        now: Callable[[], datetime] = utcnow,
        known: Known | None = None,
        censuses: CensusAhead | None = None,
        guard: Guard | None = None,
        lease: Lease | None = None,
    ) -> None:
        """``lease`` (replicas mode): every write transaction checks it first and every request
        is preceded by its local check; ``guard`` is a bare write check (tests, tools)."""
        self.thread_id = thread_id
        if lease is not None and guard is None:
            guard = partial(lease.guard, thread_id=thread_id)
        self.outcome = ThreadOutcome(thread_id, "synced")
        self._known = known  # read by the run for this pass: spares the pass its first read
        self._parked: float | None = None
        writer = PageWriter(
            mirror,
            thread_id,
            ties=lambda: ties.effective,
            now=now,
            counts=self.outcome.counts,
            guard=guard,
        )
        before = partial(lease.ensure, thread_id) if lease is not None else None
        wire = Wire(client, thread_id, page_limit, self.outcome, before=before)
        self.walk = Walk(wire, writer, ties, self.outcome, now, censuses=censuses)

    async def run(self, *, full: bool = False) -> ThreadOutcome:
        """Pass over the thread; every failure becomes this thread's recorded outcome."""
        started = time.monotonic()
        try:
            await self._mapped(full)
        except WriteRefused as exc:  # another process holds the thread now: it writes, not us
            self._fail("lost", exc)
        except Exception as exc:
            # Not one of the failures the walks expect (a write the database refused, a bug):
            # still this thread's failure alone, recorded and shown by `status`; the other
            # threads of the run go on.
            self._fail("failed", exc, detail=unexpected(exc))
            log.warning(
                "sync.thread_error",
                thread=self.thread_id,
                error=unexpected(exc),
                where=raised_at(exc),  # no traceback: its message may quote message content
            )
        self.outcome.seconds = time.monotonic() - started
        self._record()
        return self.outcome

    # -- choose a walk, run it -----------------------------------------------------------------

    async def _walks(self, state: SyncState, full: bool) -> None:
        walk = self.walk
        if state.initial_done and not full:
            # The probe and the GETs of messages stored in progress go out together.
            async with refetching(walk.wire, walk.to_refetch()) as early:
                await _or_rescan(walk, ordinary(walk, state))
                await self._refetch_in_progress(early)
            return
        if state.initial_done:
            await full_walk(walk, "reconcile")
        else:
            resumed = state.initial_after is not None
            await _or_rescan(walk, first_sync(walk, state))
            if full:
                await full_walk(walk, "reconcile")
            elif resumed:
                # Messages posted since the interrupted pass began are newer than the high-water
                # mark that pass recorded: look for them now, not next pass.
                await _or_rescan(walk, ordinary(walk, await self._state()))
        await self._refetch_in_progress(Refetches(None, walk.wire, []))

    async def _refetch_in_progress(self, early: Refetches) -> None:
        """Messages first seen while still being written: fetch them until they are final."""
        for message_id in self.walk.to_refetch():
            try:
                obj = await early.get(message_id)
            except NotFoundError:
                await self.walk.writer.tombstone(message_id)
                continue
            await self.walk.writer.refresh(prepare(obj, self.thread_id))

    # -- map its errors ------------------------------------------------------------------------

    async def _mapped(self, full: bool) -> None:
        state = await self._state()
        try:
            await self._walks(state, full)
        except ParkedError as exc:
            self._fail("parked", exc, parked=exc.retry_after)
        except NotFoundError as exc:
            self._not_found(state, exc)
        except (AuthError, PermanentError, TransientError) as exc:
            if exc.fatal:
                self._stop(exc)
            else:
                self._fail("failed", exc)

    def _not_found(self, state: SyncState, exc: NotFoundError) -> None:
        """404 on a request without a cursor: the thread may be gone, or never have existed, or
        the configuration may point somewhere else. One 404 alone cannot tell: the run decides
        (``worker/sync/runner.py``) from what the other threads answered, and writes the state."""
        self.outcome.synced_before = not (
            state.last_success_at is None and state.high_water_id is None
        )
        self._fail("missing", exc)
        self.outcome.not_found = exc

    def _stop(self, exc: ApiError) -> None:
        """An answer no other thread can do better with: the run stops, this pass writes no
        closing state (the thread did not fail: the configuration or the network did)."""
        self._fail("stopped", exc)
        self.outcome.fatal = exc

    def _fail(
        self,
        result: str,
        exc: Exception,
        *,
        parked: float | None = None,
        detail: str | None = None,
    ) -> None:
        self.outcome.result = result
        if not isinstance(exc, ThreadsyncError):
            self.outcome.error = detail  # an unexpected error's own text may quote the data
        else:
            self.outcome.error = describe(exc) if detail is None else f"{detail} ({describe(exc)})"
        self.outcome.cause = cause_of(exc)
        self._parked = parked

    # -- record the outcome --------------------------------------------------------------------

    async def _state(self) -> SyncState:
        """The thread's sync state, and (same read) the messages stored as in progress."""
        walk, thread_id = self.walk, self.thread_id

        def read() -> Known:
            with walk.mirror.read() as session:
                state = sync_state.get(session, thread_id)
                if state is None:
                    return Known(None, set())
                return Known(
                    state, messages.in_progress(session, [thread_id]).get(thread_id, set())
                )

        known, self._known = self._known, None
        if known is None:
            known = await walk.mirror.run(read)
        state = known.state
        walk.busy = set(known.busy)
        walk.writer.seen_done.clear()
        if state is None:

            def create() -> SyncState:
                with walk.mirror.write() as session:
                    return sync_state.ensure(session, thread_id)

            state = await walk.mirror.run_write(create)
        walk.writer.cursor = Cursor.of(state)
        walk.memo.found = MemoSlot(state.walk_memo).found
        return state

    def _record(self) -> None:
        """The pass's closing state (unless the run decides it, see ``_not_found``)."""
        outcome = self.outcome
        if outcome.result in ("missing", "stopped"):
            return  # the run writes this thread's state once it knows what the 404 meant
        writer = self.walk.writer
        now = self.walk.now()
        c = outcome.counts
        sets: dict[str, Any] = {"last_sync_at": now, **self.walk.memo.column()}
        adds = {
            "added": c.added,
            "changed": c.changed,
            "deleted": c.deleted,
            "restored": c.restored,
        }
        if outcome.ok:
            sets.update(
                last_success_at=now,
                consecutive_failures=0,
                last_error=None,
                last_error_kind=None,
                parked_until=None,
            )
        else:
            adds["consecutive_failures"] = 1
            sets.update(
                last_error=column_text(outcome.error),  # may quote an id the server sent
                last_error_kind=outcome.result,
                parked_until=now + timedelta(seconds=self._parked) if self._parked else None,
            )
        writer.close(sets, adds)


async def _or_rescan(walk: Walk, walking: Awaitable[None]) -> None:
    """Run a walk; if it cannot go on from its cursor, walk the thread in full instead."""
    try:
        await walking
    except Rescan as rescan:
        await full_walk(walk, rescan.reason)
