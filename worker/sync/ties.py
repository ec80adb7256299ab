"""The server's order of messages created in the same second, learned once and kept.

The wire says nothing about it: a descending listing either reverses the ascending order of a
second's messages ("reverse") or keeps creation order within it ("stable"). It decides how a
newest-first page's ties are ranked and how much of the newest second the idle probe must see.
"""

from __future__ import annotations

import anyio

from worker.client import ApiClient
from worker.errors import ApiError, AuthError, ParkedError, TransientError
from worker.logs import get_logger
from worker.store.db import Mirror
from worker.store.repo import get_meta, set_meta
from worker.sync.order import Place, TieOrder, first_tie_pair
from worker.sync.plan import Incoming

log = get_logger()

TIE_ORDER_KEY = "server.tie_order"
STABLE_PROBE_LIMIT = 20  # the idle probe's size unless the server is known to reverse ties


class TieConvention:
    """The server's order of equal-``created_at`` messages in descending listings, learned once.

    Shared by every thread of a run; persisted in the mirror so later runs need no probe.
    """

    def __init__(self, mirror: Mirror) -> None:
        self._mirror = mirror
        self._lock = anyio.Lock()
        self.value: TieOrder | None = None

    async def load(self) -> None:
        def read() -> str | None:
            with self._mirror.read() as session:
                return get_meta(session, TIE_ORDER_KEY)

        stored = await self._mirror.run(read)
        if stored in ("reverse", "stable"):
            self.value = stored  # type: ignore[assignment]

    async def learn(self, client: ApiClient, thread_id: str, pair: tuple[str, str]) -> int:
        """``pair`` were neighbours in a descending listing, in one second: which came first?

        The message listed right after ``pair[1]`` in ascending order is ``pair[0]`` exactly when
        descending order is the reverse of ascending order. Returns how many requests it made.
        """
        async with self._lock:
            if self.value is not None:
                return 0
            # Without the answer a page's ties cannot be ranked, and a guess would be stored as
            # fact: a failed probe fails this pass of the thread, which resumes on the next.
            try:
                page = await client.list_messages(thread_id, limit=2, order="asc", after=pair[1])
                # A server whose cursor is inclusive lists pair[1] itself first: skipped.
                following = [m for m in page.data if m["id"] != pair[1]]
                if following:
                    learned: TieOrder = "reverse" if following[0]["id"] == pair[0] else "stable"
                else:
                    # Nothing follows pair[1] ascending: it is the newest message, so ties keep
                    # creation order in descending listings too (unless it was just deleted).
                    await client.get_message(thread_id, pair[1])
                    learned = "stable"
            except (ParkedError, AuthError):
                raise
            except ApiError as exc:
                if exc.fatal:
                    raise
                log.info("sync.tie_probe_failed", thread=thread_id, status=exc.status)
                raise TransientError(
                    f"thread {thread_id}: could not learn how the server orders messages of one"
                    f" second ({exc}); nothing of this page was stored, the next pass retries"
                ) from exc
            self.value = learned

            def write() -> None:
                with self._mirror.write() as session:
                    set_meta(session, TIE_ORDER_KEY, learned)

            await self._mirror.run_write(write)
            log.info("sync.tie_order_learned", thread=thread_id, tie_order=learned)
            return 1 if following else 2

    async def learn_from(
        self,
        client: ApiClient,
        thread_id: str,
        prev: Place | None,
        prev_id: str | None,
        msgs: list[Incoming],
    ) -> int:
        """Learn the order from a descending page's neighbours, if it is unknown and they
        share a second; returns how many requests that made."""
        if self.value is not None:
            return 0
        pair = first_tie_pair(
            prev.created_at if prev else None, prev_id, [(m.id, m.created_at) for m in msgs]
        )
        return 0 if pair is None else await self.learn(client, thread_id, pair)

    @property
    def effective(self) -> TieOrder:
        return self.value or "reverse"

    @property
    def probe_limit(self) -> int:
        """The idle probe's size: where the server's descending listing keeps creation order
        within a second ("stable"), its first item is the *oldest* message of the newest second,
        so the probe must see the whole newest second; where it reverses it, one item does."""
        return 1 if self.value == "reverse" else STABLE_PROBE_LIMIT

    def newest_listed(self, msgs: list[Incoming], has_more: bool) -> Incoming | None:
        """The newest message in server order among a descending page's first items.

        ``None`` when it cannot be told: under stable ties the newest second fills the whole
        page and continues on the next. With no order learned, no two listed messages share a
        second.
        """
        if self.value != "stable":
            return msgs[0]
        group = [m for m in msgs if m.created_at == msgs[0].created_at]
        if len(group) == len(msgs) and has_more:
            return None
        return group[-1]
