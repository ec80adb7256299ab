"""Server order inside one ``created_at`` second, as plain functions over plain values.

Messages are ordered by ``created_at`` (whole seconds) and then by the server's own sequence, which
ids do not reveal. The mirror stores that order as ``tie_rank``: only its order *within one second*
means anything. Walking pages, each message is placed relative to the message the walk saw just
before it (``prev``):

- ascending walks: a message in the same second as ``prev`` must rank above it;
- descending walks: it must rank below it when the server's descending order is the exact reverse
  of its ascending order (``reverse``), or above it when ties keep creation order in both
  directions (``stable``), a convention threadsync learns once from the server (see ties.py).

A stored rank that already satisfies the rule is kept, so an unchanged mirror is never rewritten;
otherwise the message takes the nearest rank that does, and the following messages of the same
second follow on. This converges to the server's order on every walk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, TypeVar

TieOrder = Literal["reverse", "stable"]


class Place(NamedTuple):
    """Where a message sits: its second and its rank inside that second (one per message
    walked, hence a tuple, which also orders as (second, rank))."""

    created_at: int
    rank: int


def place_ascending(prev: Place | None, created_at: int, stored_rank: int | None) -> int:
    """The rank of the next message of an ascending walk."""
    if prev is None or prev.created_at != created_at:
        return 0 if stored_rank is None else stored_rank
    if stored_rank is not None and stored_rank > prev.rank:
        return stored_rank
    return prev.rank + 1


def place_descending(
    prev: Place | None, created_at: int, stored_rank: int | None, ties: TieOrder
) -> int:
    """The rank of the next message of a descending walk."""
    if prev is None or prev.created_at != created_at:
        return 0 if stored_rank is None else stored_rank
    if ties == "stable":
        if stored_rank is not None and stored_rank > prev.rank:
            return stored_rank
        return prev.rank + 1
    if stored_rank is not None and stored_rank < prev.rank:
        return stored_rank
    return prev.rank - 1


def first_tie_pair(
    prev_created_at: int | None, prev_id: str | None, page: list[tuple[str, int]]
) -> tuple[str, str] | None:
    """The first two neighbours of a walk that share a second, as ``(earlier_seen, later_seen)``."""
    last_id, last_at = prev_id, prev_created_at
    for msg_id, created_at in page:
        if last_id is not None and last_at == created_at:
            return last_id, msg_id
        last_id, last_at = msg_id, created_at
    return None


_Item = TypeVar("_Item", bound=tuple[Any, ...])


def ascending_of(descending: Sequence[_Item], ties: TieOrder | None) -> list[_Item] | None:
    """A descending listing's ``(id, created_at, ...)`` items in ascending listing order.

    Across seconds, the reverse; within one second, the reverse too where descending order is
    the exact reverse of ascending (``reverse``), and the same order where ties keep creation
    order both ways (``stable``). None when a second holds several messages and the convention
    is not known.
    """
    ascending = list(reversed(descending))
    if ties == "reverse":
        return ascending
    start = 0
    for end in range(1, len(ascending) + 1):
        if end == len(ascending) or ascending[end][1] != ascending[start][1]:
            if end - start > 1:
                if ties is None:
                    return None
                ascending[start:end] = ascending[start:end][::-1]
            start = end
    return ascending
