"""An ordinary pass: one small request when the thread is idle, else forward from the high-water
mark, checking that the server honours the cursor.

The probe asks for the newest message; when that is the high-water mark the thread is idle.
Otherwise the walk goes oldest-first from the mark and checks that its first page really starts
after it. A cursor the server rejects (404, 400), ignores (the walk restarts at the head) or
answers with an empty page although a newer message exists, is a cursor that names a deleted
message: the pass walks the thread in full (:class:`~worker.sync.walking.Rescan`).
"""

from __future__ import annotations

from worker.logs import get_logger
from worker.store.models import SyncState
from worker.sync.feed import CursorLost, feeding
from worker.sync.order import Place
from worker.sync.plan import Incoming
from worker.sync.walking import Rescan, Walk
from worker.sync.writer import Cursor

log = get_logger()


async def ordinary(walk: Walk, state: SyncState) -> None:
    """One small request when idle; otherwise forward from the high-water mark, checked."""
    probe = await walk.wire.list_page(order="desc", limit=walk.ties.probe_limit)
    listed = walk.wire.prepare(probe)
    high_water = state.high_water_id
    if not listed:
        if high_water is not None and await walk.has_live_messages():
            raise Rescan("the server lists no messages any more")
        return
    await walk.learn_ties(None, None, listed)
    top = walk.ties.newest_listed(listed, probe.has_more)
    if top is not None and top.id == high_water:
        return
    hw_place = await walk.place(high_water) if high_water else None
    if hw_place is None or high_water is None:
        raise Rescan("no usable high-water mark")
    if top is None:  # the newest second fills the probe: only the forward walk can tell
        await _forward_or_rescan(walk, high_water, hw_place, may_be_idle=True)
        return
    top_place = await walk.place(top.id)
    if top_place is not None and (top.created_at, top_place.rank) < (
        hw_place.created_at,
        hw_place.rank,
    ):
        # The high-water message was deleted and nothing newer exists: step the cursor back.
        await walk.writer.move(lambda st: setattr(st, "high_water_id", top.id))
        log.info("sync.cursor_stepped_back", thread=walk.thread_id, cursor=top.id)
        return
    await _forward_or_rescan(walk, high_water, hw_place)


async def _forward_or_rescan(
    walk: Walk, after: str, prev: Place, *, may_be_idle: bool = False
) -> None:
    try:
        await forward(walk, after, prev, may_be_idle=may_be_idle)
    except CursorLost as lost:
        raise Rescan(lost.reason) from None


async def forward(walk: Walk, after: str, prev: Place, *, may_be_idle: bool = False) -> None:
    """Oldest-first from the high-water mark ``after``, checking the server honours it.

    ``may_be_idle``: nothing newer may exist, so an empty first page is idle when the cursor's
    message still exists (one GET tells), and a lost cursor when it does not.
    """
    first = True
    previous_ids = {after}  # as in the first sync: the cursor's message listed again is no loss
    async with feeding(walk.wire, "asc") as feed:
        feed.fetch(after)
        while True:
            has_more, msgs = await feed.take()
            if first and not msgs:
                if may_be_idle and await walk.wire.exists(after):
                    return
                raise CursorLost("empty page after the cursor although newer messages exist")
            fresh = walk.past_relisted(msgs, previous_ids)
            if msgs and not (fresh and await _advances(walk, prev, previous_ids, fresh[0], first)):
                raise CursorLost("the server ignored the cursor")
            first = False

            def advance(st: Cursor, msgs: list[Incoming] = msgs) -> None:
                if msgs:
                    st.high_water_id = msgs[-1].id

            prev = await walk.writer.insert_new(msgs, "asc", prev, advance) or prev
            if not has_more or not msgs:
                return
            previous_ids = {m.id for m in msgs}


async def _advances(
    walk: Walk, prev: Place, previous_ids: set[str], first: Incoming, first_page: bool
) -> bool:
    if first.id in previous_ids or first.created_at < prev.created_at:
        return False
    if not first_page:
        return True
    stored = await walk.place(first.id)
    return stored is None or (first.created_at, stored.rank) > (prev.created_at, prev.rank)
