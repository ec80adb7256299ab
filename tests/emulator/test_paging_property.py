"""List paging compared with a brute-force model: random creations (ties common), deletions,
limits, orders and after/before cursors, under every cursor behaviour and both tie orders."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.emulator import Behaviour, Emulator, ManualClock, WireError
from worker.emulator.behaviour import CURSOR_MISSING_CHOICES, TIES_CHOICES
from worker.emulator.timeline import Order

MODES = list(itertools.product(CURSOR_MISSING_CHOICES, TIES_CHOICES))


@dataclass
class Row:
    id: str
    created_at: int
    seq: int
    deleted: bool = False


def model_order(rows: list[Row], order: str, ties: str, tombstones: bool) -> list[Row]:
    pool = [r for r in rows if tombstones or not r.deleted]
    asc = sorted(pool, key=lambda r: (r.created_at, r.seq))
    if order == "asc":
        return asc
    if ties == "reverse":
        return asc[::-1]
    return sorted(pool, key=lambda r: (-r.created_at, r.seq))


def model_page(
    rows: list[Row],
    behaviour: Behaviour,
    order: str,
    limit: int,
    after: str | None,
    before: str | None,
) -> tuple[str, list[str], bool]:
    """("ok", ids, has_more) or ("404"|"400", [], False): the answer the contract promises."""
    mode = behaviour.cursor_missing
    seq = model_order(rows, order, behaviour.ties, tombstones=mode == "keep_place")
    ids = [r.id for r in seq]
    bounds: dict[str, int] = {}
    for name, cursor in (("after", after), ("before", before)):
        if cursor is None:
            continue
        if cursor in ids:
            bounds[name] = ids.index(cursor)
        elif mode in ("404", "keep_place"):
            return ("404", [], False)
        elif mode == "400":
            return ("400", [], False)
        elif mode == "empty":
            return ("ok", [], False)
        # "ignore": as if not sent
    lo = bounds["after"] + 1 if "after" in bounds else 0
    hi = bounds["before"] if "before" in bounds else len(seq)
    window = [r.id for r in seq[lo : max(lo, hi)] if not r.deleted]
    if "before" in bounds and "after" not in bounds:
        page = window[-limit:]
        return ("ok", page, len(window) > len(page))
    return ("ok", window[:limit], len(window) > limit)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.integers(0, 2)),  # clock step before the create
        st.tuples(st.just("delete"), st.integers(0, 200)),
    ),
    min_size=0,
    max_size=40,
)
cursor = st.one_of(st.none(), st.integers(0, 200), st.just(-1))  # -1: never existed
query = st.tuples(st.sampled_from(["asc", "desc"]), st.integers(1, 12), cursor, cursor)


@pytest.mark.parametrize(("cursor_missing", "ties"), MODES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=ops, queries=st.lists(query, min_size=1, max_size=8))
def test_pages_match_the_brute_force_model(
    cursor_missing: str,
    ties: str,
    script: list[tuple[str, int]],
    queries: list[tuple[str, int, int | None, int | None]],
) -> None:
    """Every page (ids, order, has_more, or the error) equals the model's answer."""
    clock = ManualClock(1_700_000_000.0)
    behaviour = Behaviour().updated({"cursor_missing": cursor_missing, "ties": ties})
    emulator = Emulator(clock=clock, behaviour=behaviour)
    tid = emulator.create_thread()["id"]
    rows: list[Row] = []
    for op, arg in script:
        if op == "create":
            clock.advance(arg)
            data = emulator.create_message(tid, {"role": "user", "content": "x"})
            rows.append(Row(data["id"], data["created_at"], len(rows)))
        elif rows and not rows[arg % len(rows)].deleted:
            row = rows[arg % len(rows)]
            emulator.delete_message(tid, row.id)
            row.deleted = True

    def pick(choice: int | None) -> str | None:
        if choice is None:
            return None
        if choice < 0 or not rows:
            return "msg_neverexisted000000000"
        return rows[choice % len(rows)].id

    for order, limit, after_i, before_i in queries:
        after, before = pick(after_i), pick(before_i)
        expected = model_page(rows, behaviour, order, limit, after, before)
        try:
            page = emulator.list_messages(
                tid,
                order="asc" if order == "asc" else "desc",
                limit=limit,
                after=after,
                before=before,
            )
            got = ("ok", [r.id for r in page.items], page.has_more)
        except WireError as err:
            got = (str(err.status), [], False)
        assert got == expected, (order, limit, after, before)


@pytest.mark.parametrize(("cursor_missing", "ties"), MODES)
@settings(max_examples=25, deadline=None)
@given(steps=st.lists(st.integers(0, 2), min_size=0, max_size=60), limit=st.integers(1, 9))
def test_following_after_walks_the_whole_thread(
    cursor_missing: str, ties: str, steps: list[int], limit: int
) -> None:
    """Following ``after=last id`` from the head yields the truth exactly, in both orders."""
    clock = ManualClock(1_700_000_000.0)
    behaviour = Behaviour().updated({"cursor_missing": cursor_missing, "ties": ties})
    emulator = Emulator(clock=clock, behaviour=behaviour)
    tid = emulator.create_thread()["id"]
    for step in steps:
        clock.advance(step)
        emulator.create_message(tid, {"role": "assistant", "content": "y"})
    truth = [m["id"] for m in emulator.truth()["threads"][tid]]
    orders: tuple[Order, ...] = ("asc", "desc")
    for order in orders:
        seen: list[str] = []
        after = None
        while True:
            page = emulator.list_messages(tid, order=order, limit=limit, after=after)
            seen += [r.id for r in page.items]
            if not page.has_more:
                break
            after = page.items[-1].id
        expected = truth if order == "asc" else model_ids_desc(emulator, tid, ties)
        assert seen == expected


def model_ids_desc(emulator: Emulator, tid: str, ties: str) -> list[str]:
    rows = [
        Row(m["id"], m["created_at"], i) for i, m in enumerate(emulator.truth()["threads"][tid])
    ]
    return [r.id for r in model_order(rows, "desc", ties, tombstones=False)]


def test_keep_place_walk_survives_deleting_the_cursor_message() -> None:
    """Under keep_place a walk whose cursor message is deleted between pages skips nothing."""
    clock = ManualClock(1_700_000_000.0)
    emulator = Emulator(clock=clock, behaviour=Behaviour(cursor_missing="keep_place"))
    tid = emulator.create_thread()["id"]
    for _ in range(10):
        emulator.create_message(tid, {"role": "user", "content": "z"})
    first = emulator.list_messages(tid, order="asc", limit=4)
    emulator.delete_message(tid, first.items[-1].id)
    rest = emulator.list_messages(tid, order="asc", limit=100, after=first.items[-1].id)
    truth = [m["id"] for m in emulator.truth()["threads"][tid]]
    assert [r.id for r in first.items[:3]] + [r.id for r in rest.items] == truth


@pytest.mark.parametrize("mode", ["404", "400", "empty", "ignore"])
def test_deleted_cursor_answers_per_behaviour(mode: str) -> None:
    """A deleted ``after`` cursor: 404, 400, an empty final page, or the head of the listing."""
    emulator = Emulator(clock=ManualClock(), behaviour=Behaviour(cursor_missing=mode))  # type: ignore[arg-type]
    tid = emulator.create_thread()["id"]
    ids = [emulator.create_message(tid, {"role": "user", "content": "a"})["id"] for _ in range(5)]
    emulator.delete_message(tid, ids[1])
    if mode in ("404", "400"):
        with pytest.raises(WireError) as caught:
            emulator.list_messages(tid, order="asc", after=ids[1])
        assert caught.value.status == int(mode)
        return
    page = emulator.list_messages(tid, order="asc", after=ids[1])
    if mode == "empty":
        assert (page.items, page.has_more) == ([], False)
    else:
        assert [r.id for r in page.items] == [ids[0], *ids[2:]]
