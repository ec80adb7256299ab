"""The full walk (a reconcile, and the rescan every other walk falls back to).

Oldest-first over the whole thread: it applies changed content and metadata, tombstones what the
server no longer lists and restores what reappears. It compares the listing with the mirror one
``created_at`` window at a time, so memory stays flat. A walk that finds nothing to write leaves
a memo that lets the next one, if the mirror and every page are byte for byte the same, skip
parsing (``memo.py``), through one seam (``replay.py``).
"""

from __future__ import annotations

from worker.errors import TransientError
from worker.logs import get_logger
from worker.sync.census import Census, load_census
from worker.sync.feed import CursorLost, Page, PageFeed
from worker.sync.memo import MemoRecorder
from worker.sync.order import Place
from worker.sync.plan import Incoming
from worker.sync.replay import replay_or_walk
from worker.sync.walking import Walk
from worker.sync.writer import Cursor

log = get_logger()

MAX_RESTARTS = 3


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
                await replay_or_walk(walk, memo, census_of=self.census, compare=self._compare)
            except CursorLost as lost:
                log.info("sync.rescan_restart", thread=walk.thread_id, reason=lost.reason)
                restarts += 1
                if restarts >= MAX_RESTARTS:
                    raise TransientError(
                        f"thread {walk.thread_id}: the server kept losing the cursor during a"
                        " full walk; will retry on a later pass"
                    ) from None
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

    async def _compare(
        self, feed: PageFeed, census: Census | None, first: Page, record: MemoRecorder
    ) -> bool:
        """The walk from its ``first`` page, comparing each with the mirror (with ``census``
        when there is one) and writing what differs; each page is reported to ``record``.
        Returns whether it wrote."""
        walk, writer = self.walk, self.walk.writer
        after: str | None = None
        prev: Place | None = None
        low: int | None = None
        # Ids listed in the open window [low, ...), with their second: a window only closes at a
        # second the walk has fully passed, so a tie group spanning pages is compared whole.
        seen: dict[str, int] = {}
        previous_ids: set[str] = set()
        wrote = False  # a page of this walk was written: its memo needs proving
        taken = first
        while True:
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
            # always starts from the beginning); the last page records the end, with the pass's
            # closing state if it changes nothing either (known from the census).
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
                return wrote
            seen = {mid: at for mid, at in seen.items() if high is not None and at >= high}
            low = high
            previous_ids = {m.id for m in msgs}
            after = msgs[-1].id
            page = await feed.take_page()
            assert isinstance(page, Page)  # only the first page is ever asked for ``unless``
            taken = page
