"""The walk memo's one seam in the full walk: replay the memo, or walk and record one.

:func:`replay_or_walk` is all a full walk knows of the memo (``memo.py`` says what it is). It
reads the census the walk compares with, and, when the thread's memo fits it, asks for each page
with the hash it had (``list_messages_unless``): pages that come back the same are not parsed, and
a thread whose pages all do ends as its memo says, with nothing written. Otherwise the ordinary
walk (``compare``) runs, from the first page already fetched (parsed where it is, when it is the
first page that differs), reporting each page to a :class:`~worker.sync.memo.MemoRecorder`; its
memo is then recorded with the pass's closing state: as it is when it wrote nothing, proven
against the mirror it left when it wrote. A later page that differs restarts the walk without the
memo (the pages before it were not compared).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from worker.logs import get_logger
from worker.store.db import STORE_ERRORS
from worker.sync.census import Census
from worker.sync.feed import Page, PageFeed, feeding
from worker.sync.memo import MemoRecorder, WalkMemo
from worker.sync.order import TieOrder
from worker.sync.walking import Walk
from worker.sync.writer import Cursor

log = get_logger()

CensusOf = Callable[[], Awaitable[Census | None]]
# The ordinary full walk from its first page (the feed fetches the rest): whether it wrote.
Compare = Callable[[PageFeed, Census | None, Page, MemoRecorder], Awaitable[bool]]


class MemoMissed(Exception):
    """A page after the first differs from the walk memo's (see ``worker/sync/memo.py``)."""

    def __init__(self, page: int) -> None:
        super().__init__(f"page {page}")
        self.page = page


async def replay_or_walk(
    walk: Walk, memo: WalkMemo | None, *, census_of: CensusOf, compare: Compare
) -> None:
    """One full walk of the thread, replayed from ``memo`` where it can be."""
    try:
        await _attempt(walk, memo, census_of, compare)
    except MemoMissed as missed:
        # Not a fault: the thread changed since the memo; walk it the ordinary way.
        log.debug("sync.walk_memo_missed", thread=walk.thread_id, page=missed.page)
        await _attempt(walk, None, census_of, compare)


async def _attempt(
    walk: Walk, memo: WalkMemo | None, census_of: CensusOf, compare: Compare
) -> None:
    key = (walk.limit, walk.ties.effective)
    # Replayed only if nothing stored in progress is missing from what the memo listed so: the
    # ordinary walk would then leave the set to re-fetch as the replay does.
    replay = memo if memo is not None and walk.still_busy() <= memo.fresh else None
    census: Census | None = None
    checked = False
    if replay is not None and replay.order == "desc":
        # Whether to list newest-first depends on the census: known before the first page.
        census, replay = await _census_for(walk, replay, key, census_of)
        checked = True
    async with feeding(walk.wire, replay.order if replay else "asc") as feed:
        # The first page is on its way while the census is read.
        feed.fetch(None, hashed=True, unless=replay.pages[0].sha if replay else None)
        if not checked:
            census, replay = await _census_for(walk, replay, key, census_of)
        first = await _replayed(walk, feed, replay, checked)
        if first is None:
            return
        if replay is not None and census is None:
            census = await census_of()  # the first page differs: compare it
        record = MemoRecorder()
        wrote = await compare(feed, census, first, record)
    if census is None:
        walk.memo.record(None)
    elif wrote:
        await _prove(walk, record, census_of)
    else:
        walk.memo.record(record.memo(census.sig, *key))


async def _replayed(
    walk: Walk, feed: PageFeed, replay: WalkMemo | None, checked: bool
) -> Page | None:
    """Take pages while they are the memo's; None if all were (the walk is over), else the
    first page to compare, parsed."""
    index = 0  # of the page taken next
    while True:
        # A page the replay cannot use ends the walk: nothing is fetched after it.
        usable = replay is None or (replay.order == "asc" and index == 0)
        taken = await feed.take_page(follow=usable)
        if isinstance(taken, Page):
            if replay is not None and (index > 0 or replay.order == "desc"):
                # The pages before it were not compared, or this one is not in walk order.
                raise MemoMissed(index)
            return taken
        if replay is None:
            assert not checked  # listed newest-first only for a census that fits
            return feed.adopt(taken)  # the census differs: compare it after all
        page = replay.pages[index]
        index += 1
        if index == len(replay.pages):
            _ended_as(walk, replay)
            return None
        feed.fetch(page.next, unless=replay.pages[index].sha)


def _ended_as(walk: Walk, memo: WalkMemo) -> None:
    """The end of a walk its memo replayed: as the walk it replays ended."""
    last = memo.end

    def advance(st: Cursor) -> None:
        if last is not None:
            st.high_water_id = last
        st.initial_done, st.initial_after = True, None
        st.last_full_at = walk.now()

    walk.writer.move_late(advance)
    walk.writer.fresh.update(memo.fresh)
    walk.memo.keep()


async def _census_for(
    walk: Walk, memo: WalkMemo | None, key: tuple[int, TieOrder], census_of: CensusOf
) -> tuple[Census | None, WalkMemo | None]:
    """The census a full walk compares with (None: above the limit, or not needed), and
    ``memo`` if it fits that census."""
    # The signature the run read ahead describes the state this pass began from: it serves no
    # walk after this pass has written a page.
    early = await walk.censuses.take(walk.thread_id) if walk.censuses else False
    if walk.writer.page_writes:
        early = False
    if early is not False and early is not None and memo and memo.fits(early, *key):
        return None, memo  # read only if a page differs after all
    # Read here, unless the read ahead found the thread above the census limit.
    census = None if early is None else await census_of()
    if census is None or (memo and not memo.fits(census.sig, *key)):
        memo = None
    return census, memo


async def _prove(walk: Walk, record: MemoRecorder, census_of: CensusOf) -> None:
    """Record the memo of a full walk that wrote, if the mirror it left (read again once its
    writes are committed) proves it."""
    if record.spoilt:
        walk.memo.record(None)
        return
    try:
        census = await census_of()
    except STORE_ERRORS as exc:  # the walk is done: only its memo is lost
        log.warning("sync.walk_memo_unproven", thread=walk.thread_id, error=type(exc).__name__)
        census = None
    found = record.proven(census, walk.limit, walk.ties.effective)
    walk.memo.record(found)
    if found is not None:
        log.debug("sync.walk_memo_proven", thread=walk.thread_id, order=found.order)
