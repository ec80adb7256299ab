"""The first sync: newest-first (recent conversation lands first), resumable from its cursor.

Every page records the cursor with it, so an interrupted first sync resumes where it stopped; a
cursor the server refuses, ignores, or answers with an empty page for a deleted message, gives way
to a full walk (:class:`~worker.sync.walking.Rescan`).
"""

from __future__ import annotations

from worker.store.models import SyncState
from worker.sync.feed import CursorLost, Page, feeding
from worker.sync.memo import MemoRecorder
from worker.sync.order import Place
from worker.sync.plan import Incoming
from worker.sync.walking import Rescan, Walk
from worker.sync.writer import Cursor


async def first_sync(walk: Walk, state: SyncState) -> None:
    """Newest-first, resumable from ``initial_after``; ends by marking the first sync done."""
    after = state.initial_after
    prev = await walk.place(after) if after else None
    prev_id = after
    # The cursor's own message counts as listed: a page that starts with it again (a server
    # whose cursor is inclusive) has not lost the cursor.
    previous_ids: set[str] = {after} if after else set()
    high_water = state.high_water_id
    # A first sync from the start walks the whole thread: it may leave a walk memo (proven once
    # it is done) that spares the next reconcile parsing it all again.
    record = MemoRecorder("desc") if after is None else None
    async with feeding(walk.wire, "desc") as feed:
        feed.fetch(after, hashed=record is not None)
        while True:
            try:
                taken = await feed.take_page()
            except CursorLost as lost:
                reason = f"first-sync {lost.reason}"
                break
            assert isinstance(taken, Page)  # nothing was fetched ``unless``
            has_more, msgs = taken.has_more, taken.msgs
            fresh = walk.past_relisted(msgs, previous_ids)
            if (
                after is not None
                and msgs
                and not (fresh and _advances(prev, previous_ids, fresh, high_water))
            ):
                reason = "first-sync cursor ignored by the server"
                break
            if not msgs and after is not None:
                if record is not None:
                    record.spoilt = True  # a replay could not ask the question below again
                if not await walk.wire.exists(after):
                    reason = "first-sync cursor names a deleted message"
                    break
            await walk.learn_ties(prev, prev_id, fresh)  # neighbours, not a re-listing
            done = not has_more or not msgs
            if high_water is None and msgs:
                high_water = msgs[0].id

            def advance(st: Cursor, msgs: list[Incoming] = msgs, done: bool = done) -> None:
                if msgs:
                    st.initial_after = msgs[-1].id
                    if st.high_water_id is None:
                        st.high_water_id = msgs[0].id
                if done:
                    st.initial_done, st.initial_after = True, None

            prev = await walk.writer.insert_new(msgs, "desc", prev, advance)
            if record is not None:
                assert taken.sha is not None
                record.page(taken.sha, msgs, has_more)
                if record.listed is None:  # above the census limit: no memo to prove
                    record = None
                    feed.hashed = False
            if done:
                if record is not None and not record.spoilt:
                    walk.memo.record(
                        record.first_sync(walk.limit, walk.ties.value, sqlite=walk.mirror.is_sqlite)
                    )
                return
            previous_ids = {m.id for m in msgs}
            after = prev_id = msgs[-1].id
    raise Rescan(reason)


def _advances(
    prev: Place | None, previous_ids: set[str], msgs: list[Incoming], high_water: str | None
) -> bool:
    first = msgs[0]
    if first.id in previous_ids or first.id == high_water:
        return False
    return prev is None or first.created_at <= prev.created_at
