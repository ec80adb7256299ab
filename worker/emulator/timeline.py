"""Server order and cursor paging over one ordered collection (a thread's messages, or threads).

Order is ``created_at`` (whole seconds) then creation sequence. Deleted entries stay as tombstones
so that the ``keep_place`` behaviour can still locate them; the other behaviours never see them.
Ordered views are cached per (order, ties, tombstones) and dropped on any insertion or deletion,
so a read-heavy listing costs one dict lookup plus a slice.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from worker.emulator.behaviour import CursorMissing, Ties
from worker.emulator.wire import bad_request, not_found
from worker.jsontext import dumps

Order = Literal["asc", "desc"]


class Record:
    """One stored object (message or thread) with its wire form cached as JSON bytes."""

    __slots__ = ("_json", "created_at", "data", "deleted", "id", "seq")

    def __init__(self, data: dict[str, Any], seq: int) -> None:
        self.id: str = data["id"]
        self.created_at: int = data["created_at"]
        self.seq = seq
        self.deleted = False
        self.data = data
        self._json: bytes | None = None

    def json(self) -> bytes:
        if self._json is None:
            self._json = dumps(self.data)  # a lone surrogate goes out escaped
        return self._json

    def changed(self) -> None:
        """Call after editing ``data``: the cached bytes are stale."""
        self._json = None

    @property
    def key(self) -> tuple[int, int]:
        return (self.created_at, self.seq)


@dataclass(slots=True)
class View:
    """One ordering of the timeline, with each id's position in it."""

    items: list[Record]
    index: dict[str, int]


@dataclass(slots=True)
class Page:
    items: list[Record]
    has_more: bool


@dataclass(slots=True)
class Timeline:
    """Records in ascending server order (tombstones included) plus cached views."""

    entries: list[Record] = field(default_factory=list)
    by_id: dict[str, Record] = field(default_factory=dict)
    _views: dict[tuple[str, str, bool], View] = field(default_factory=dict)

    def add(self, record: Record) -> None:
        # A clock set backwards can make a new record older than existing ones: insert in order.
        if not self.entries or self.entries[-1].key <= record.key:
            self.entries.append(record)
        else:
            bisect.insort(self.entries, record, key=lambda r: r.key)
        self.by_id[record.id] = record
        self._views.clear()

    def delete(self, record_id: str) -> None:
        self.by_id[record_id].deleted = True
        self._views.clear()

    def live(self, record_id: str) -> Record | None:
        record = self.by_id.get(record_id)
        return None if record is None or record.deleted else record

    def live_asc(self) -> list[Record]:
        return [r for r in self.entries if not r.deleted]

    def view(self, order: Order, ties: Ties, tombstones: bool) -> View:
        cache_key = (order, ties, tombstones)
        found = self._views.get(cache_key)
        if found is None:
            found = self._build(order, ties, tombstones)
            self._views[cache_key] = found
        return found

    def _build(self, order: Order, ties: Ties, tombstones: bool) -> View:
        items = self.entries if tombstones else [r for r in self.entries if not r.deleted]
        if order == "desc":
            if ties == "reverse":
                items = items[::-1]
            else:
                items = sorted(items, key=lambda r: (-r.created_at, r.seq))
        else:
            items = list(items)
        return View(items=items, index={r.id: i for i, r in enumerate(items)})


_EMPTY = -1


def list_page(
    timeline: Timeline,
    *,
    order: Order,
    ties: Ties,
    cursor_missing: CursorMissing,
    limit: int,
    after: str | None = None,
    before: str | None = None,
    keep: Callable[[Record], bool] | None = None,
    noun: str = "message",
) -> Page:
    """One page of live records, as the list endpoints answer it.

    ``after=X``: the records that follow X in the requested order. ``before=X``: the ``limit``
    records immediately preceding X (still in the requested order); ``has_more`` then says whether
    more records lie further from X. With both, the records strictly between, from ``after`` on.
    ``keep`` filters (e.g. ``run_id``); filtered-out records still hold their place for cursors.
    """
    tombstones = cursor_missing == "keep_place"
    view = timeline.view(order, ties, tombstones)
    start, end = 0, len(view.items)
    backwards = False
    if after is not None:
        pos = _locate(view, after, cursor_missing, noun)
        if pos == _EMPTY:
            return Page([], False)
        if pos is not None:
            start = pos + 1
    if before is not None:
        pos = _locate(view, before, cursor_missing, noun)
        if pos == _EMPTY:
            return Page([], False)
        if pos is not None:
            end = max(pos, start)
            # `before` alone pages backwards from it; with an `after` the window reads forwards.
            backwards = after is None or after not in view.index
    if keep is None and not tombstones:
        return _slice(view.items, start, end, limit, backwards=backwards)
    return _scan(view.items, start, end, limit, backwards=backwards, keep=_predicate(keep))


def _predicate(keep: Callable[[Record], bool] | None) -> Callable[[Record], bool]:
    if keep is None:
        return lambda r: not r.deleted
    return lambda r: not r.deleted and keep(r)


def _locate(view: View, cursor: str, mode: CursorMissing, noun: str) -> int | None:
    pos = view.index.get(cursor)
    if pos is not None:
        return pos
    if mode in ("404", "keep_place"):
        # keep_place still finds deleted ids in its view; reaching here means it never existed.
        raise not_found(f"No {noun} found with id '{cursor}'.")
    if mode == "400":
        raise bad_request(f"Invalid cursor: no {noun} with id '{cursor}'.", code="invalid_cursor")
    if mode == "empty":
        return _EMPTY
    return None  # "ignore": list as if the cursor had not been sent


def _slice(items: Sequence[Record], start: int, end: int, limit: int, *, backwards: bool) -> Page:
    if backwards:
        first = max(start, end - limit)
        return Page(list(items[first:end]), first > start)
    stop = min(end, start + limit)
    return Page(list(items[start:stop]), stop < end)


def _scan(
    items: Sequence[Record],
    start: int,
    end: int,
    limit: int,
    *,
    backwards: bool,
    keep: Callable[[Record], bool],
) -> Page:
    picked: list[Record] = []
    positions = range(end - 1, start - 1, -1) if backwards else range(start, end)
    has_more = False
    for i in positions:
        record = items[i]
        if not keep(record):
            continue
        if len(picked) == limit:
            has_more = True
            break
        picked.append(record)
    if backwards:
        picked.reverse()
    return Page(picked, has_more)
