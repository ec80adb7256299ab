"""Tie ranks: whatever the walk, sorting by (created_at, rank) gives the server's order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.sync.order import (
    Place,
    TieOrder,
    ascending_of,
    first_tie_pair,
    place_ascending,
    place_descending,
)

# A server timeline: message i has created_at seconds[i]; the list is in server (ascending) order.
seconds_st = st.lists(st.integers(0, 3), min_size=0, max_size=30).map(
    lambda steps: [sum(steps[: i + 1]) for i in range(len(steps))]
)


def desc_listing(seconds: list[int], ties: TieOrder) -> list[int]:
    """Indexes in the order a descending listing shows them under a tie convention."""
    idx = list(range(len(seconds)))
    if ties == "reverse":
        return idx[::-1]
    return sorted(idx, key=lambda i: (-seconds[i], i))


def walk_asc(
    seconds: list[int], order: list[int], ranks: dict[int, int], prev: Place | None
) -> Place | None:
    for i in order:
        ranks[i] = place_ascending(prev, seconds[i], ranks.get(i))
        prev = Place(seconds[i], ranks[i])
    return prev


def assert_server_order(seconds: list[int], ranks: dict[int, int], live: list[int]) -> None:
    assert sorted(live, key=lambda i: (seconds[i], ranks[i])) == live


@given(seconds_st)
def test_ascending_walk_from_scratch(seconds: list[int]) -> None:
    """A first ascending walk numbers each second 0, 1, 2 ... in listing order."""
    ranks: dict[int, int] = {}
    walk_asc(seconds, list(range(len(seconds))), ranks, None)
    assert_server_order(seconds, ranks, list(range(len(seconds))))


@given(seconds_st, st.sampled_from(["reverse", "stable"]), st.integers(0, 30))
def test_descending_first_sync_then_new_messages(
    seconds: list[int], ties: TieOrder, split: int
) -> None:
    """Newest-first for the first messages, then forward for the rest: one consistent order."""
    split = min(split, len(seconds))
    first, later = seconds[:split], list(range(split, len(seconds)))
    ranks: dict[int, int] = {}
    prev: Place | None = None
    for i in desc_listing(first, ties):
        ranks[i] = place_descending(prev, seconds[i], ranks.get(i), ties)
        prev = Place(seconds[i], ranks[i])
    hw = Place(seconds[split - 1], ranks[split - 1]) if split else None
    walk_asc(seconds, later, ranks, hw)
    assert_server_order(seconds, ranks, list(range(len(seconds))))


@given(
    seconds_st, st.sets(st.integers(0, 29)), st.dictionaries(st.integers(0, 29), st.integers(-5, 5))
)
def test_full_walk_repairs_any_stored_ranks(
    seconds: list[int], deleted: set[int], scrambled: dict[int, int]
) -> None:
    """Whatever ranks are stored (wrong guesses, gaps from deletions), one full walk fixes them."""
    live = [i for i in range(len(seconds)) if i not in deleted]
    ranks = {i: r for i, r in scrambled.items() if i < len(seconds)}
    walk_asc(seconds, live, ranks, None)
    assert_server_order(seconds, ranks, live)


@given(seconds_st)
def test_unchanged_mirror_keeps_its_ranks(seconds: list[int]) -> None:
    """A second walk over an unchanged thread keeps every rank (so it writes nothing)."""
    ranks: dict[int, int] = {}
    order = list(range(len(seconds)))
    walk_asc(seconds, order, ranks, None)
    before = dict(ranks)
    walk_asc(seconds, order, ranks, None)
    assert ranks == before


@given(seconds_st, st.sampled_from(["reverse", "stable"]))
def test_a_descending_listing_put_back_in_ascending_order(
    seconds: list[int], ties: TieOrder
) -> None:
    """What a first sync's memo is proven by: its newest-first listing, put back in ascending
    order, is the server's ascending order, and an ascending walk over the ranks the first sync
    gave keeps them all (so it would write nothing)."""
    listing = desc_listing(seconds, ties)
    items = [(str(i), seconds[i], "digest") for i in listing]
    ascending = ascending_of(items, ties)
    assert ascending is not None
    assert [int(mid) for mid, _, _ in ascending] == list(range(len(seconds)))
    ranks: dict[int, int] = {}
    prev: Place | None = None
    for i in listing:
        ranks[i] = place_descending(prev, seconds[i], ranks.get(i), ties)
        prev = Place(seconds[i], ranks[i])
    before = dict(ranks)
    walk_asc(seconds, list(range(len(seconds))), ranks, None)
    assert ranks == before
    # With no convention learned, only a listing without ties can be put back.
    tied = len(set(seconds)) < len(seconds)
    assert (ascending_of(items, None) is None) == tied


def test_first_tie_pair_spans_the_page_boundary() -> None:
    """The last message of the previous page and the first of this one can be the pair."""
    assert first_tie_pair(5, "a", [("b", 5), ("c", 4)]) == ("a", "b")
    assert first_tie_pair(6, "a", [("b", 5), ("c", 4)]) is None
    assert first_tie_pair(None, None, [("b", 5), ("c", 5)]) == ("b", "c")
