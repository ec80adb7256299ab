"""A thread's stored messages as a full walk compares them, read once for the whole walk.

Without it every page of a reconcile cost a read transaction (the page's ids, then the window's
live ids) in a worker thread: four reads per 500-message thread, ~800 for the 100,000-message
benchmark, each a thread hand-off and a GIL round trip for under a millisecond of SQLite work.
Read once (capped at ``LIMIT`` messages, so memory stays flat for any thread; a larger thread is
compared page by page as before), unchanged pages are recognised with no read at all. A page that
differs is planned again inside its write transaction from fresh reads, so the census only ever
decides what needs no write.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from functools import cached_property
from itertools import pairwise

from sqlmodel import Session

from worker.store import messages
from worker.store.messages import Incoming, Stored, census_sig
from worker.sync.plan import plan_page

__all__ = ["Census", "census_sig", "load_census"]


class Census:
    """``sig`` is the SHA-256 of the census as read. The rows are decoded on first use only: a
    walk its memo replays never needs them."""

    LIMIT = 2000

    def __init__(self, sig: bytes, rows: Callable[[], list[Stored]]) -> None:
        self.sig = sig
        self._rows = rows

    @cached_property
    def stored(self) -> dict[str, Stored]:
        return {r.id: r for r in self._rows()}

    @cached_property
    def _live(self) -> tuple[list[int], list[str]]:
        live = sorted((r.created_at, r.id) for r in self.stored.values() if not r.deleted)
        return [at for at, _ in live], [mid for _, mid in live]

    def unchanged_by(self, ascending: Sequence[tuple[str, int, str]]) -> bool:
        """Whether an oldest-first full walk listing ``ascending`` (``(id, created_at, digest)``
        in listing order) would find nothing to write here: every message stored, live, the
        same, where the walk would rank it, and no live message unlisted (the proof behind a
        memo of a walk that wrote, see worker/sync/memo.py)."""
        stored = self.stored
        ids = {mid for mid, _, _ in ascending}
        if len(ids) != len(ascending):
            return False
        if any(at < before for (_, before, _), (_, at, _) in pairwise(ascending)):
            return False  # not an ascending listing: a walk would restart
        if any(not r.deleted and r.id not in ids for r in stored.values()):
            return False
        page = [Incoming(mid, at, b"", dg, None, None, None, None) for mid, at, dg in ascending]
        plan = plan_page(stored, page, direction="asc", ties="reverse", prev=None)
        return plan.empty and not plan.counts.writes

    def unlisted(self, *, low: int | None, high: int | None, seen: frozenset[str]) -> list[str]:
        """As :func:`worker.store.messages.unlisted`, from the census."""
        at, ids = self._live
        start = 0 if low is None else bisect_left(at, low)
        end = len(at) if high is None else bisect_left(at, high)
        return [mid for mid in ids[start:end] if mid not in seen]


def load_census(session: Session, thread_id: str, limit: int | None = None) -> Census | None:
    """The thread's census, or None when it holds more than ``limit`` (``Census.LIMIT``)."""
    read = messages.census_rows(session, thread_id, Census.LIMIT if limit is None else limit)
    return None if read is None else Census(*read)
