"""A walk memo: how the next reconcile of an unchanged thread skips parsing it.

A full walk is a pure function of two inputs: what the mirror holds of the thread (its census:
ids, creation times, ranks, digests, tombstones) and the bytes of the pages the server lists.
When a walk finds nothing to write, it records both: the SHA-256 of its census and, per page,
the SHA-256 of the body with the cursor it continued from. The next walk that reads the same
census and is answered the same bytes, page after page, would reach the same verdict (nothing
to write), so it does not parse, serialise, digest or compare a single message: it hashes each
body and moves on. That is most of a reconcile's work on the event loop (bench_reconcile).

A walk that *wrote* records a memo too when it can prove the same verdict: once its writes are
committed it reads the census again and judges every message it listed against it, as a full
walk would (:meth:`~worker.sync.census.Census.unchanged_by`); only if nothing would be written,
and no live message is missing from its listing, is that census recorded with its pages. A
first sync from the start proves its newest-first walk (its memo's ``order`` is ``desc``)
against the census of exactly what it stored, computed rather than read back: if the mirror
holds anything else, its census has another signature and the memo never fits. The reconcile
after it then lists the thread newest-first and replays, instead of parsing every page once
more for nothing. Newest-first bytes fix the thread's messages and their order as well as
oldest-first ones do; the ascending order the proof judges is derived with the tie order the
first sync ranked by (the memo's ``ties``), and a memo whose thread has a tie that the
convention did not yet decide is not recorded.

Any difference falls back to the ordinary walk: a census that differs (a local change, a
sync that stored something since) before the first page is compared; a first page whose body
differs is parsed where it is (oldest-first memos; a newest-first one restarts oldest-first,
one request more); a later page that differs restarts the walk without the memo, because the
pages before it were not parsed. So the memo can cost requests (at most the pages of the
thread, only when a thread changed between two reconciles) and never correctness: it only ever
answers "nothing to write", and only for inputs identical to those of a walk that found, or
proved, nothing to write.

The memo is kept in ``sync_state.walk_memo`` and written with the pass's closing state. A walk
that asked whether a cursor's message still exists, or had no census (a thread above
``Census.LIMIT``) records none (a walk restarted after a lost cursor starts a new record, from
a census read afresh). :data:`VERSION` is part of it: a change to what a walk decides must bump
it, so a memo from older code is never trusted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Literal, NamedTuple

import anyio
import anyio.lowlevel
import orjson

from worker.logs import get_logger
from worker.store.db import STORE_ERRORS, Mirror
from worker.store.messages import census_sig
from worker.sync.census import Census, load_census
from worker.sync.order import (
    Place,
    TieOrder,
    ascending_of,
    place_ascending,
    place_descending,
)
from worker.sync.plan import Incoming

log = get_logger()

Order = Literal["asc", "desc"]
# What a full walk compares a listed message by: (id, created_at, digest) of an Incoming.
_COMPARED: Callable[[Incoming], tuple[str, int, str]] = itemgetter(0, 1, 3)

VERSION = 2  # 2: order and end


class MemoPage(NamedTuple):
    sha: bytes  # SHA-256 of the page's body
    next: str | None  # the walk's next cursor: the page's last message (None: an empty page)
    has_more: bool


@dataclass(frozen=True, slots=True)
class WalkMemo:
    """What an unchanged full walk saw; see the module docstring."""

    census: bytes  # Census.sig
    limit: int  # the page size the walk asked for
    ties: str | None  # the tie order it compared under
    pages: tuple[MemoPage, ...]
    fresh: frozenset[str]  # the messages it listed as in progress
    order: Order  # the order it listed in
    end: str | None  # the newest message listed: the cursor a full walk ends with

    def fits(self, census: bytes, limit: int, ties: str | None) -> bool:
        return self.census == census and self.limit == limit and self.ties == ties

    def dumps(self) -> str:
        return orjson.dumps(
            {
                "v": VERSION,
                "census": self.census.hex(),
                "limit": self.limit,
                "ties": self.ties,
                "pages": [[p.sha.hex(), p.next, p.has_more] for p in self.pages],
                "fresh": sorted(self.fresh),
                "order": self.order,
                "end": self.end,
            }
        ).decode()

    @classmethod
    def loads(cls, text: str | None) -> WalkMemo | None:
        """The memo in ``text``; None for none, another version, or anything malformed (a memo
        is only a shortcut: one that cannot be read is ignored and replaced by the next walk)."""
        if not text:
            return None
        try:
            return cls._parse(orjson.loads(text))
        except (orjson.JSONDecodeError, TypeError, ValueError, KeyError) as exc:
            log.warning("sync.walk_memo_unreadable", error=type(exc).__name__)
            return None

    @classmethod
    def _parse(cls, value: Any) -> WalkMemo | None:
        if value["v"] != VERSION:
            return None
        pages = tuple(MemoPage(bytes.fromhex(sha), nxt, more) for sha, nxt, more in value["pages"])
        limit, ties = value["limit"], value["ties"]
        fresh, order, end = value["fresh"], value["order"], value["end"]
        if (
            order not in ("asc", "desc")
            or not (end is None or (type(end) is str and end))
            or type(limit) is not int
            or not (ties is None or type(ties) is str)
            or not all(type(m) is str for m in fresh)
            or not _well_formed(pages)
        ):
            raise ValueError("malformed walk memo")
        census = bytes.fromhex(value["census"])
        return cls(census, limit, ties, pages, frozenset(fresh), order, end)


def _well_formed(pages: tuple[MemoPage, ...]) -> bool:
    """Every page but the last continues after a message; the last ends the walk."""
    if not pages:
        return False
    for page in pages[:-1]:
        if not (page.has_more and type(page.next) is str and page.next):
            return False
    last = pages[-1]
    ends = not last.has_more or last.next is None
    return (
        ends
        and all(len(p.sha) == 32 and type(p.has_more) is bool for p in pages)
        and (last.next is None or type(last.next) is str)
    )


@dataclass(slots=True)
class MemoRecorder:
    """Collects an ordinary full walk's pages; spoilt by anything a memo could not replay."""

    order: Order = "asc"
    pages: list[MemoPage] = field(default_factory=list)
    fresh: set[str] = field(default_factory=set)
    end: str | None = None  # the last message listed so far (oldest-first walks)
    # What each listed message is compared by (id, created_at, digest), in listing order, kept
    # for the proof of a walk that wrote; dropped (and the proof given up) past Census.LIMIT.
    listed: list[tuple[str, int, str]] | None = field(default_factory=list)
    spoilt: bool = False

    def page(self, sha: bytes, msgs: Sequence[Incoming], has_more: bool) -> None:
        self.pages.append(MemoPage(sha, msgs[-1].id if msgs else None, has_more))
        self.fresh.update(m.id for m in msgs if m.status == "in_progress")
        if msgs and self.order == "asc":
            self.end = msgs[-1].id
        if self.listed is not None:
            if len(self.listed) + len(msgs) > Census.LIMIT:
                self.listed = None
            else:
                self.listed.extend(map(_COMPARED, msgs))

    def memo(
        self, census: bytes, limit: int, ties: str | None, *, end: str | None = None
    ) -> WalkMemo | None:
        """The memo of a walk that wrote nothing against ``census`` (Census.sig); ``end``: the
        newest message in server order, where it is not the last listed (newest-first walks)."""
        if self.spoilt or not self.pages:
            return None
        pages = tuple(self.pages)
        if not _well_formed(pages):
            return None
        if self.order == "asc":
            end = self.end
        fresh = frozenset(self.fresh)
        return WalkMemo(census, limit, ties, pages, fresh, self.order, end)

    def proven(self, census: Census | None, limit: int, ties: TieOrder) -> WalkMemo | None:
        """The memo of an oldest-first walk that wrote, if ``census`` (read after its writes) is
        what its pages leave: judged as a walk over the same messages would judge it."""
        if self.order != "asc" or census is None or self.listed is None:
            return None
        if not census.unchanged_by(self.listed):
            return None
        return self.memo(census.sig, limit, ties)

    def first_sync(self, limit: int, ties: TieOrder | None, *, sqlite: bool) -> WalkMemo | None:
        """The memo of a first sync from the start (newest-first), keyed by the census of what
        it stored: every message it listed, ranked as it ranked them (``ties``: the tie order
        learned, None if none yet), and nothing else.

        Not read back: if the mirror holds anything else (rows from before, a page that found
        some of its messages stored already), its census has another signature and the memo
        never fits. Against that census an oldest-first walk would write nothing if it keeps
        every rank, which is checked here (order.py proves it always does).
        """
        if self.order != "desc" or self.listed is None:
            return None
        ranked: list[tuple[str, int, int, str, bool]] = []  # Stored's fields, for census_sig
        prev: Place | None = None
        for mid, at, digest in self.listed:
            rank = place_descending(prev, at, None, ties or "reverse")
            prev = Place(at, rank)
            ranked.append((mid, at, rank, digest, False))
        rows = ascending_of(ranked, ties)  # in census order, if the walk keeps every rank
        if rows is None:
            return None
        prev = None
        for _, at, rank, _, _ in rows:
            if prev is not None and at < prev.created_at:
                return None  # not a descending listing
            if place_ascending(prev, at, rank) != rank:
                return None
            prev = Place(at, rank)
        # The newest in server order ends an oldest-first walk: under "stable" ties it is the
        # last of the newest second, which a newest-first listing shows first of its second.
        end = rows[-1][0] if rows else None
        return self.memo(census_sig(rows, sqlite=sqlite), limit, ties or "reverse", end=end)


class _Keep:
    """What a pass that leaves ``walk_memo`` as it is writes there (nothing)."""


KEEP = _Keep()


class MemoSlot:
    """The thread's ``walk_memo``: the memo the pass began with, and what its closing state
    writes there (:data:`KEEP`: nothing; None: clear it; else the new memo's text)."""

    def __init__(self, text: str | None = None) -> None:
        self.found = WalkMemo.loads(text)
        self.out: str | _Keep | None = KEEP

    def record(self, memo: WalkMemo | None) -> None:
        self.out = None if memo is None else memo.dumps()

    def keep(self) -> None:
        self.out = KEEP

    def column(self) -> dict[str, str | None]:
        """The closing state's ``walk_memo`` column, if it writes one."""
        return {} if isinstance(self.out, _Keep) else {"walk_memo": self.out}


class CensusAhead:
    """The census signatures of a full run's threads that have a memo, read ahead in batches.

    A walk needs its thread's census signature before it can trust a memo. Read by each walk, it
    was a read transaction per thread (200 for the benchmark, each a thread hand-off and a
    session); read here, it is one per :data:`BATCH` threads, in the order the run starts them,
    while the first walks' requests are already out. Reading stays at most one batch ahead of
    the walks that have begun (the runner reports each pass's end too, so it never waits for a
    walk that will not come), so a signature is at most a batch of walks old when it is taken.
    A signature is only taken by a walk that starts from the state the run read (see
    ``replay.py``), and a batch that cannot be read leaves its walks to read their own census.
    """

    BATCH = 16

    def __init__(self, mirror: Mirror, thread_ids: Sequence[str]) -> None:
        self._mirror = mirror
        self._ids = list(thread_ids)
        self._index = {thread_id: i for i, thread_id in enumerate(self._ids)}
        self._ready = {thread_id: anyio.Event() for thread_id in self._ids}
        self._sigs: dict[str, bytes | None] = {}
        self._taken: set[str] = set()  # taken by a walk, or its pass is over: not read any more
        self._reached = -1  # the furthest thread (in run order) whose walk began or pass ended
        self._moved = anyio.Event()

    async def run(self) -> None:
        try:
            for start in range(0, len(self._ids), self.BATCH):
                while self._reached < start - self.BATCH:
                    await self._moved.wait()
                    self._moved = anyio.Event()
                whole = self._ids[start : start + self.BATCH]
                batch = [thread_id for thread_id in whole if thread_id not in self._taken]
                try:
                    if batch:
                        self._sigs.update(await self._mirror.run(self._read, batch))
                except STORE_ERRORS as exc:  # each walk reads its own then
                    log.warning("sync.census_read_failed", error=type(exc).__name__)
                for thread_id in whole:
                    self._ready[thread_id].set()
                await anyio.lowlevel.checkpoint()  # the reads are shielded; cancelled here
        finally:
            for event in self._ready.values():  # cancelled: nobody waits for what never comes
                event.set()

    def _read(self, batch: list[str]) -> dict[str, bytes | None]:
        with self._mirror.read() as session:
            found = {thread_id: load_census(session, thread_id) for thread_id in batch}
        return {thread_id: None if c is None else c.sig for thread_id, c in found.items()}

    def _reach(self, thread_id: str) -> None:
        index = self._index.get(thread_id)
        if index is not None and index > self._reached:
            self._reached = index
            self._moved.set()

    def passed(self, thread_id: str) -> None:
        """The thread's pass is over (whether or not it walked)."""
        self._taken.add(thread_id)
        self._reach(thread_id)

    async def take(self, thread_id: str) -> bytes | Literal[False] | None:
        """The thread's signature as read ahead (once); None: the thread is above the census
        limit; False: not read (not in the run's list, taken already, or the read failed)."""
        ready = self._ready.get(thread_id)
        if ready is None or thread_id in self._taken:
            return False
        self._taken.add(thread_id)
        self._reach(thread_id)
        await ready.wait()
        return self._sigs.pop(thread_id, False)
