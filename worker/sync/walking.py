"""What the walks of one pass share: the wire, the page writer, the tie order and the mirror's
reads of the thread, and the signal that a walk must give way to a full walk."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from worker.logs import get_logger
from worker.store import messages
from worker.store.db import Mirror
from worker.sync.feed import Wire
from worker.sync.memo import CensusAhead, MemoSlot
from worker.sync.order import Place
from worker.sync.outcome import ThreadOutcome
from worker.sync.plan import Incoming
from worker.sync.ties import TieConvention
from worker.sync.writer import PageWriter

log = get_logger()


class Rescan(Exception):
    """The walk cannot go on from its cursor (a deleted message, a server ignoring it): the
    thread is walked in full instead."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(eq=False)
class Walk:
    """One pass's walking gear; each walk (``first_sync``, ``forward``, ``full_walk``) takes it."""

    wire: Wire
    writer: PageWriter
    ties: TieConvention
    outcome: ThreadOutcome
    now: Callable[[], datetime]
    memo: MemoSlot = field(default_factory=MemoSlot)
    censuses: CensusAhead | None = None
    # Stored as in progress when the pass began (read with the state): what is still so, less
    # those this pass has since seen final or gone, is re-fetched at the end.
    busy: set[str] = field(default_factory=set)

    @property
    def thread_id(self) -> str:
        return self.wire.thread_id

    @property
    def limit(self) -> int:
        return self.wire.limit

    @property
    def mirror(self) -> Mirror:
        return self.writer.mirror

    def still_busy(self) -> set[str]:
        return self.busy - self.writer.seen_done

    def to_refetch(self) -> list[str]:
        """Stored as in progress and not listed by this pass (a listing is current already)."""
        return [m for m in sorted(self.still_busy()) if m not in self.writer.fresh]

    async def place(self, message_id: str | None) -> Place | None:
        """Where a stored, live message sits; None if unknown or tombstoned."""
        if message_id is None:
            return None

        def read() -> Place | None:
            with self.mirror.read() as session:
                found = messages.place(session, message_id)
            return None if found is None else Place(found.created_at, found.rank)

        return await self.mirror.run(read)

    async def has_live_messages(self) -> bool:
        def read() -> bool:
            with self.mirror.read() as session:
                return messages.has_live(session, self.thread_id)

        return await self.mirror.run(read)

    async def learn_ties(
        self, prev: Place | None, prev_id: str | None, msgs: list[Incoming]
    ) -> None:
        # Awaited first: `self.outcome.requests += await ...` would read the count before the
        # wait and overwrite what this pass's prefetch added meanwhile.
        made = await self.ties.learn_from(self.wire.client, self.thread_id, prev, prev_id, msgs)
        self.outcome.requests += made

    def past_relisted(self, msgs: list[Incoming], previous_ids: set[str]) -> list[Incoming]:
        """``msgs`` from the first message the previous page of the walk did not list.

        A page that starts by listing again messages the previous page ended with has still
        moved on: those messages are duplicates across the seam (stored again, the later copy
        wins), and whether the walk advanced is judged from the first new message. Each
        duplicate is warned about once. Empty when the page lists nothing new at all: the
        server ignored the cursor.
        """
        if not previous_ids or not msgs:
            return msgs
        skip = 0
        while skip < len(msgs) and msgs[skip].id in previous_ids:
            skip += 1
        if skip == len(msgs):
            return []
        for m in msgs:
            if m.id in previous_ids:
                log.warning(
                    "sync.duplicate_message",
                    thread=self.thread_id,
                    message=m.id,
                    kept="the later copy",
                )
        return msgs[skip:]
