"""The full walk (a reconcile, and the rescan every other walk falls back to).

Oldest-first over the whole thread: it applies changed content and metadata, tombstones what the
server no longer lists and restores what reappears. It compares the listing with the mirror one
``created_at`` window at a time, so memory stays flat. A walk that finds nothing to write leaves
a memo that lets the next one, if the mirror and every page are byte for byte the same, skip
parsing (``memo.py``).
"""

from __future__ import annotations

import sqlite3

from sqlalchemy.exc import SQLAlchemyError

from worker.errors import TransientError
from worker.logs import get_logger
from worker.sync.census import Census, load_census
from worker.sync.feed import CursorLost, Hit, feeding
from worker.sync.memo import MemoRecorder, WalkMemo
from worker.sync.order import Place, TieOrder
from worker.sync.plan import Incoming
from worker.sync.walking import Walk
from worker.sync.writer import Cursor

log = get_logger()

MAX_RESTARTS = 3


class MemoMissed(Exception):
    """A page after the first differs from the walk memo's (see ``worker/sync/memo.py``)."""

    def __init__(self, page: int) -> None:
        super().__init__(f"page {page}")
        self.page = page


async def full_walk(walk: Walk, reason: str) -> None:
    """Walk the thread in full, for ``reason`` (logged); restart if the cursor is lost."""
    await FullWalk(walk).run(reason)


class FullWalk:
    """One full walk of a thread, with its restarts."""

    def __init__(self, walk: Walk) -> None:
        self.walk = walk

    async def run(self, reason: str) -> None:
        walk = self.walk
        walk.outcome.rescans += 1
        log.info("sync.rescan", thread=walk.thread_id, reason=reason)
        memo, restarts = walk.memo.found, 0
        while True:
            try:
                await self._once(memo)
            except CursorLost as lost:
                log.info("sync.rescan_restart", thread=walk.thread_id, reason=lost.reason)
                restarts += 1
                if restarts >= MAX_RESTARTS:
                    raise TransientError(
                        f"thread {walk.thread_id}: the server kept losing the cursor during a"
                        " full walk; will retry on a later pass"
                    ) from None
            except MemoMissed as missed:
                # Not a fault: the thread changed since the memo; walk it the ordinary way.
                log.debug("sync.walk_memo_missed", thread=walk.thread_id, page=missed.page)
            else:
                return
            memo = None

    async def census(self) -> Census | None:
        """The thread's stored messages for a full walk to compare with (None: too many)."""
        mirror, thread_id = self.walk.mirror, self.walk.thread_id

        def read() -> Census | None:
            with mirror.read() as session:
                return load_census(session, thread_id)

        return await mirror.run(read)

    async def _once(self, memo: WalkMemo | None) -> None:
        walk, writer = self.walk, self.walk.writer
        after: str | None = None
        prev: Place | None = None
        low: int | None = None
        # Ids listed in the open window [low, ...), with their second: a window only closes at a
        # second the walk has fully passed, so a tie group spanning pages is compared whole.
        seen: dict[str, int] = {}
        previous_ids: set[str] = set()
        record = MemoRecorder()
        wrote = False  # a page of this walk was written: its memo needs proving (_prove)
        key = (walk.limit, walk.ties.effective)
        # Replayed only if nothing stored in progress is missing from what the memo listed so:
        # the ordinary walk would then leave the set to re-fetch as the replay does.
        replay = memo if memo is not None and walk.still_busy() <= memo.fresh else None
        census: Census | None = None
        checked = False
        if replay is not None and replay.order == "desc":
            # Whether to list newest-first depends on the census: known before the first page.
            census, replay = await self._census_for(replay, key)
            checked = True
        async with feeding(walk.wire, replay.order if replay else "asc") as feed:
            # The first page is on its way while the census is read.
            feed.fetch(None, hashed=True, unless=replay.pages[0].sha if replay else None)
            if not checked:
                census, replay = await self._census_for(replay, key)
            index = 0  # of the page taken next
            while True:
                # A page the replay cannot use ends the walk: nothing is fetched after it.
                usable = replay is None or (replay.order == "asc" and index == 0)
                taken = await feed.take_page(follow=usable)
                if isinstance(taken, Hit):
                    if replay is not None:
                        page = replay.pages[index]
                        index += 1
                        if index == len(replay.pages):
                            self._replayed(replay)
                            return
                        feed.fetch(page.next, unless=replay.pages[index].sha)
                        continue
                    assert not checked  # listed newest-first only for a census that fits
                    taken = feed.adopt(taken)  # the census differs: compare it after all
                elif replay is not None and (index > 0 or replay.order == "desc"):
                    # The pages before it were not compared, or this one is not in walk order.
                    raise MemoMissed(index)
                if replay is not None and census is None:
                    census = await self.census()  # the first page differs: compare it
                replay = None
                has_more, msgs = taken.has_more, taken.msgs
                fresh = walk.past_relisted(msgs, previous_ids)
                if (
                    after is not None
                    and msgs
                    and (
                        not fresh
                        or fresh[0].id in seen
                        or (prev is not None and fresh[0].created_at < prev.created_at)
                    )
                ):
                    raise CursorLost("the server ignored the cursor")
                if after is not None and not msgs:
                    record.spoilt = True  # the memo could not ask the question below again
                    if not await walk.wire.exists(after):
                        raise CursorLost("empty page after a cursor that names a deleted message")
                done = not has_more or not msgs
                high = None if done else msgs[-1].created_at
                seen.update((m.id, m.created_at) for m in msgs)
                window = (low, high, frozenset(seen))
                assert taken.sha is not None
                record.page(taken.sha, msgs, has_more)

                def advance(st: Cursor, msgs: list[Incoming] = msgs, done: bool = done) -> None:
                    if msgs:
                        st.high_water_id = msgs[-1].id
                    if done:
                        st.initial_done, st.initial_after = True, None
                        st.last_full_at = walk.now()

                # A page that changes nothing writes nothing (not even the cursor: a full walk
                # always starts from the beginning); the last page records the end, with the
                # pass's closing state if it changes nothing either (known from the census).
                writes = writer.page_writes
                if not done or census is not None:
                    placed = await writer.apply_if_changed(
                        msgs, prev, advance, sweep=window, census=census, late=done
                    )
                else:
                    placed = await writer.apply(msgs, "asc", prev, advance, sweep=window)
                prev = placed or prev
                wrote |= writer.page_writes != writes
                if done:
                    if census is None:
                        walk.memo.record(None)
                    elif wrote:
                        await self._prove(record)
                    else:
                        walk.memo.record(record.memo(census.sig, *key))
                    return
                seen = {mid: at for mid, at in seen.items() if high is not None and at >= high}
                low = high
                previous_ids = {m.id for m in msgs}
                after = msgs[-1].id

    async def _census_for(
        self, memo: WalkMemo | None, key: tuple[int, TieOrder]
    ) -> tuple[Census | None, WalkMemo | None]:
        """The census a full walk compares with (None: above the limit, or not needed), and
        ``memo`` if it fits that census."""
        walk = self.walk
        # The signature the run read ahead describes the state this pass began from: it serves
        # no walk after this pass has written a page.
        early = await walk.censuses.take(walk.thread_id) if walk.censuses else False
        if walk.writer.page_writes:
            early = False
        if early is not False and early is not None and memo and memo.fits(early, *key):
            return None, memo  # read only if a page differs after all
        # Read here, unless the read ahead found the thread above the census limit.
        census = None if early is None else await self.census()
        if census is None or (memo and not memo.fits(census.sig, *key)):
            memo = None
        return census, memo

    async def _prove(self, record: MemoRecorder) -> None:
        """Record the memo of a full walk that wrote, if the mirror it left (read again once
        its writes are committed) proves it."""
        walk = self.walk
        if record.spoilt:
            walk.memo.record(None)
            return
        try:
            census = await self.census()
        except (SQLAlchemyError, sqlite3.Error) as exc:  # the walk is done: only its memo is lost
            log.warning("sync.walk_memo_unproven", thread=walk.thread_id, error=type(exc).__name__)
            census = None
        found = record.proven(census, walk.limit, walk.ties.effective)
        walk.memo.record(found)
        if found is not None:
            log.debug("sync.walk_memo_proven", thread=walk.thread_id, order=found.order)

    def _replayed(self, memo: WalkMemo) -> None:
        """The end of a walk its memo replayed: as the walk it replays ended."""
        walk, last = self.walk, memo.end

        def advance(st: Cursor) -> None:
            if last is not None:
                st.high_water_id = last
            st.initial_done, st.initial_after = True, None
            st.last_full_at = walk.now()

        walk.writer.move_late(advance)
        walk.writer.fresh.update(memo.fresh)
        walk.memo.keep()
