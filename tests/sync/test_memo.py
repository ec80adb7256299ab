"""The walk memo: a reconcile of an unchanged thread replays the last full walk (a reconcile's
oldest-first one, or the first sync's newest-first one) without parsing it, and anything that
differs (the mirror, a page, the memo itself) falls back to the ordinary walk. A walk that wrote
records a memo only when the mirror it left proves it.

On SQLite and PostgreSQL; the yardstick stays the emulator's ground truth.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any

import anyio
import orjson
import pytest
from sqlalchemy import delete, text, update
from sqlmodel import col

import worker.client.models as models
from tests.sync.test_sync import exported, seeded, sync, truth
from worker.emulator import Emulator, ManualClock, WireError
from worker.store.db import Mirror
from worker.store.models import Message, SyncState
from worker.sync.census import Census
from worker.sync.feed import Wire
from worker.sync.full_walk import FullWalk
from worker.sync.memo import VERSION, CensusAhead, MemoPage, WalkMemo
from worker.sync.plan import digest_of, prepare
from worker.sync.writer import write_page

pytestmark = pytest.mark.anyio

PAGES = 3  # 260 messages at the default page size of 100
ORDERS = pytest.mark.parametrize("order", ["asc", "desc"])


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def emulator(clock: ManualClock) -> Emulator:
    return Emulator(clock=clock, seed=7)


def parses(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the list bodies parsed (a replayed page is only hashed)."""
    calls = {"n": 0}
    real = models.parse_page

    def counted(body: bytes, *args: Any) -> Any:
        calls["n"] += 1
        return real(body, *args)

    # Every list body parsed goes through it: listed, or hashed and then wanted after all.
    monkeypatch.setattr(models, "parse_page", counted)
    return calls


async def compared_in_full(
    emulator: Emulator, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """A reconcile that replays no memo: every page requested once and parsed once."""
    parsed = parses(monkeypatch)
    report = await sync(emulator, mirror, full=True)
    assert report.ok
    assert parsed["n"] == PAGES
    assert report.requests == PAGES
    return report


def memo_of(mirror: Mirror, thread_id: str) -> WalkMemo | None:
    with mirror.read() as session:
        state = session.get(SyncState, thread_id)
        assert state is not None
        return WalkMemo.loads(state.walk_memo)


def forget_memo(mirror: Mirror, thread_id: str) -> None:
    """As a mirror upgraded to schema 0004 is: no memo yet."""
    with mirror.write() as session:
        session.execute(
            update(SyncState).where(col(SyncState.thread_id) == thread_id).values(walk_memo=None)
        )


async def remembered(emulator: Emulator, mirror: Mirror, order: str = "asc") -> str:
    """A mirrored thread of three pages whose memo is of a walk in ``order``: the first sync's
    (newest-first, proven after it wrote), or a reconcile's that found nothing to write."""
    (thread_id,) = seeded(emulator, mirror, seed=8, threads=1, messages=260)
    assert (await sync(emulator, mirror)).ok
    first = memo_of(mirror, thread_id)
    assert first is not None
    assert first.order == "desc"
    if order == "asc":
        forget_memo(mirror, thread_id)
        report = await sync(emulator, mirror, full=True)
        assert report.ok
        assert report.counts.writes == 0
    memo = memo_of(mirror, thread_id)
    assert memo is not None
    assert memo.order == order
    assert len(memo.pages) == PAGES
    return thread_id


@ORDERS
async def test_an_unchanged_reconcile_replays_the_memo_without_parsing(
    emulator: Emulator, mirror: Mirror, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    thread_id = await remembered(emulator, mirror, order)
    with mirror.read() as session:
        before = session.get(SyncState, thread_id)
        assert before is not None
    parsed = parses(monkeypatch)
    report = await sync(emulator, mirror, full=True)
    assert report.ok
    assert parsed["n"] == 0
    assert report.counts.writes == 0
    assert report.requests == PAGES  # the same requests as the walk it replays
    with mirror.read() as session:
        after = session.get(SyncState, thread_id)
        assert after is not None
    # It ends as the walk it replays ends: the end of the walk is recorded, the memo kept.
    assert after.last_full_at is not None
    if order == "asc":
        assert before.last_full_at is not None
        assert after.last_full_at > before.last_full_at
    else:  # the first sync's memo: this is the first full walk
        assert before.last_full_at is None
    assert after.pages == before.pages + 1
    assert after.high_water_id == truth(emulator, thread_id)[-1]["id"]
    assert after.walk_memo == before.walk_memo
    assert exported(mirror, thread_id) == truth(emulator, thread_id)


@ORDERS
@pytest.mark.parametrize("tamper", ["tombstone", "content", "removed"])
async def test_a_change_to_the_mirror_is_repaired_despite_the_memo(
    emulator: Emulator, mirror: Mirror, tamper: str, order: str
) -> None:
    """The memo is keyed by the mirror's census: rows changed behind the sync's back (even a
    column the export does not show) are compared and repaired, not trusted."""
    thread_id = await remembered(emulator, mirror, order)
    victim = truth(emulator, thread_id)[150]["id"]
    row = update(Message).where(col(Message.id) == victim)
    with mirror.write() as session:
        if tamper == "removed":
            session.execute(delete(Message).where(col(Message.id) == victim))
        elif tamper == "tombstone":
            session.execute(row.values(deleted_at=datetime.now(UTC)))
        else:
            forged = orjson.dumps({**truth(emulator, thread_id)[150], "status": "forged"})
            session.execute(row.values(raw=forged.decode(), digest=digest_of(forged)))
    report = await sync(emulator, mirror, full=True)
    assert report.ok
    assert report.counts.writes == 1
    assert exported(mirror, thread_id) == truth(emulator, thread_id)
    with mirror.read() as session:
        stored = session.get(Message, victim)
        assert stored is not None
        assert stored.deleted_at is None
        assert b"forged" not in stored.raw.encode()


@ORDERS
async def test_a_page_that_changed_after_the_first_restarts_the_walk_without_the_memo(
    emulator: Emulator, mirror: Mirror, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    thread_id = await remembered(emulator, mirror, order)
    # On the third page in the memo's order.
    target = truth(emulator, thread_id)[250 if order == "asc" else 10]["id"]
    emulator.set_behaviour(metadata="replace")  # the seeded map may be full already
    emulator.modify_message(thread_id, target, {"metadata": {"edited": "yes"}})
    parsed = parses(monkeypatch)
    report = await sync(emulator, mirror, full=True)
    assert report.ok
    assert report.counts.changed == 1
    # Two pages replayed, the third differs (parsed as it came): the walk starts over.
    assert report.requests == PAGES + PAGES
    assert parsed["n"] == 1 + PAGES
    assert exported(mirror, thread_id) == truth(emulator, thread_id)
    # The walk wrote, and the mirror it left proves its pages: it records a memo...
    memo = memo_of(mirror, thread_id)
    assert memo is not None
    assert memo.order == "asc"
    # ...which the next reconcile replays.
    parsed["n"] = 0
    report = await sync(emulator, mirror, full=True)
    assert report.counts.writes == 0
    assert parsed["n"] == 0
    assert memo_of(mirror, thread_id) == memo


async def test_a_newest_first_memo_whose_first_page_differs_restarts_oldest_first(
    emulator: Emulator, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its pages are not in a walk's order, so none is compared where it is: one request more."""
    thread_id = await remembered(emulator, mirror, "desc")
    emulator.delete_message(thread_id, truth(emulator, thread_id)[-3]["id"])
    parsed = parses(monkeypatch)
    report = await sync(emulator, mirror, full=True)
    assert report.ok
    assert report.counts.deleted == 1
    assert report.requests == 1 + PAGES
    assert parsed["n"] == 1 + PAGES
    assert exported(mirror, thread_id) == truth(emulator, thread_id)


async def test_a_changed_first_page_is_compared_where_it_is(
    emulator: Emulator, mirror: Mirror
) -> None:
    thread_id = await remembered(emulator, mirror, "asc")
    emulator.delete_message(thread_id, truth(emulator, thread_id)[3]["id"])
    report = await sync(emulator, mirror, full=True)
    assert report.ok
    assert report.counts.deleted == 1
    assert report.requests == PAGES  # no request is repeated
    assert exported(mirror, thread_id) == truth(emulator, thread_id)


@ORDERS
async def test_a_new_message_stored_by_an_ordinary_pass_defeats_the_memo(
    emulator: Emulator,
    mirror: Mirror,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    order: str,
) -> None:
    """A pass that stores something changes the census, so the next reconcile compares (a
    newest-first memo is dropped before any request: every page is listed once)."""
    thread_id = await remembered(emulator, mirror, order)
    clock.advance(5)
    emulator.append_messages(thread_id, messages=[{"role": "user", "content": "one more"}])
    assert (await sync(emulator, mirror)).counts.added == 1
    report = await compared_in_full(emulator, mirror, monkeypatch)
    assert report.counts.writes == 0
    assert exported(mirror, thread_id) == truth(emulator, thread_id)


async def test_an_unreadable_or_foreign_memo_is_ignored_and_replaced(
    emulator: Emulator, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    thread_id = await remembered(emulator, mirror)
    good = memo_of(mirror, thread_id)
    assert good is not None
    for stored in ("{not json", f'{{"v": {VERSION + 1}}}', f'{{"v": {VERSION}, "pages": 3}}'):
        with mirror.write() as session:
            session.execute(
                text("UPDATE sync_state SET walk_memo = :m WHERE thread_id = :t"),
                {"m": stored, "t": thread_id},
            )
        report = await compared_in_full(emulator, mirror, monkeypatch)
        assert report.counts.writes == 0
        assert memo_of(mirror, thread_id) == good


async def test_a_memo_of_another_page_size_is_not_replayed(
    emulator: Emulator, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    thread_id = await remembered(emulator, mirror)
    parsed = parses(monkeypatch)
    report = await sync(emulator, mirror, full=True, page_limit=50)
    assert report.counts.writes == 0
    assert parsed["n"] == 6
    memo = memo_of(mirror, thread_id)
    assert memo is not None
    assert memo.limit == 50


@ORDERS
async def test_a_message_stored_in_progress_but_not_listed_so_defeats_the_memo(
    emulator: Emulator, mirror: Mirror, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    """The ordinary walk decides from the listing which stored in-progress messages to fetch
    again; a replay knows only those it listed in progress, so any other means a comparison."""
    thread_id = await remembered(emulator, mirror, order)
    victim = truth(emulator, thread_id)[42]["id"]
    with mirror.write() as session:
        session.execute(
            update(Message).where(col(Message.id) == victim).values(status="in_progress")
        )
    await compared_in_full(emulator, mirror, monkeypatch)  # listed final: no GET of it


def test_memo_round_trip_and_shape_checks() -> None:
    page = MemoPage(b"\x01" * 32, "msg_a", True)
    last = MemoPage(b"\x02" * 32, "msg_b", False)
    memo = WalkMemo(
        b"\x03" * 32, 100, "reverse", (page, last), frozenset({"msg_b"}), "asc", "msg_b"
    )
    assert WalkMemo.loads(memo.dumps()) == memo
    newest_first = WalkMemo(memo.census, 100, "stable", (page, last), frozenset(), "desc", "msg_z")
    assert WalkMemo.loads(newest_first.dumps()) == newest_first
    assert memo.fits(b"\x03" * 32, 100, "reverse")
    assert not memo.fits(b"\x03" * 32, 100, "stable")
    assert not memo.fits(b"\x04" * 32, 100, "reverse")
    assert not memo.fits(b"\x03" * 32, 20, "reverse")
    # A walk that continues after its last page, or stops before it, is not a memo.
    for pages in ((page,), (last, last), ()):
        broken = WalkMemo(memo.census, 100, "reverse", pages, frozenset(), "asc", None)
        assert WalkMemo.loads(broken.dumps()) is None
    for field, value in (("order", "sideways"), ("end", ""), ("end", 7)):
        odd = {**orjson.loads(memo.dumps()), field: value}
        assert WalkMemo.loads(orjson.dumps(odd).decode()) is None


@ORDERS
async def test_a_failed_read_ahead_of_censuses_leaves_each_walk_to_read_its_own(
    emulator: Emulator, mirror: Mirror, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    thread_id = await remembered(emulator, mirror, order)

    def broken(self: CensusAhead, batch: list[str]) -> dict[str, bytes | None]:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(CensusAhead, "_read", broken)
    parsed = parses(monkeypatch)
    report = await sync(emulator, mirror, full=True)
    assert report.ok
    assert report.counts.writes == 0
    assert parsed["n"] == 0  # the walk read the census itself, and the memo still served
    assert exported(mirror, thread_id) == truth(emulator, thread_id)


async def test_census_read_ahead_stays_a_batch_ahead_of_the_walks(mirror: Mirror) -> None:
    """Signatures are read at most one batch ahead of the walks that began (so none is much
    older than its walk), a batch whose passes are all over is not read, and the reader ends
    when the run's passes do."""
    ids = [f"thread_{i:02d}" for i in range(40)]  # batches of 16: 0-15, 16-31, 32-39
    ahead = CensusAhead(mirror, ids)
    read: list[list[str]] = []

    def recording(batch: list[str]) -> dict[str, bytes | None]:
        read.append(batch)
        return dict.fromkeys(batch, b"sig")

    ahead._read = recording  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(ahead.run)
        await anyio.wait_all_tasks_blocked()
        assert read == [ids[:16]]  # the first batch, before any walk asks
        assert await ahead.take(ids[0]) == b"sig"
        await anyio.wait_all_tasks_blocked()
        assert read == [ids[:16], ids[16:32]]  # one batch ahead of the walk at thread 0
        assert await ahead.take(ids[0]) is False  # once only
        for thread_id in ids[:33]:
            ahead.passed(thread_id)  # those passes ended without walking (failed, say)
        await anyio.wait_all_tasks_blocked()
    assert read == [ids[:16], ids[16:32], ids[33:]]  # ended: only the threads still to come
    assert await ahead.take(ids[39]) == b"sig"


async def test_census_read_ahead_is_cancelled_while_it_waits_for_walks(mirror: Mirror) -> None:
    ahead = CensusAhead(mirror, [f"thread_{i:02d}" for i in range(40)])
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ahead.run)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    assert await ahead.take("thread_30") is False  # never read: the walk reads its own


@pytest.mark.parametrize("ties", ["reverse", "stable"])
async def test_a_first_sync_proves_its_walk_under_either_tie_order(
    emulator: Emulator, mirror: Mirror, monkeypatch: pytest.MonkeyPatch, ties: str
) -> None:
    """Put back in ascending order by the tie order learned, the first sync's listing is judged
    unchanged, and rightly: a reconcile without the memo writes nothing either."""
    emulator.set_behaviour(ties=ties)
    (thread_id,) = seeded(emulator, mirror, seed=3, threads=1, messages=250)
    at = [m["created_at"] for m in truth(emulator, thread_id)]
    assert len(set(at)) < len(at) - 20  # many seconds hold several messages
    assert (await sync(emulator, mirror)).ok
    memo = memo_of(mirror, thread_id)
    assert memo is not None
    assert memo.order == "desc"
    assert memo.ties == ties
    parsed = parses(monkeypatch)
    report = await sync(emulator, mirror, full=True)
    assert report.counts.writes == 0
    assert parsed["n"] == 0
    # It ends as an oldest-first walk does: on the newest message in server order (under
    # "stable" ties not the first one a newest-first listing shows).
    with mirror.read() as session:
        state = session.get(SyncState, thread_id)
        assert state is not None
    assert state.high_water_id == truth(emulator, thread_id)[-1]["id"]
    forget_memo(mirror, thread_id)
    report = await sync(emulator, mirror, full=True)
    assert report.counts.writes == 0
    assert parsed["n"] == PAGES
    assert exported(mirror, thread_id) == truth(emulator, thread_id)


async def test_a_first_sync_over_rows_it_did_not_list_is_not_replayed(
    emulator: Emulator, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live row the first sync did not list (kept from before, say) is one a full walk must
    delete: the first sync's memo is keyed by the census of what it stored, which is not the
    mirror's, so the reconcile compares, deletes it, and proves its own walk."""
    (thread_id,) = seeded(emulator, mirror, seed=8, threads=1, messages=260)
    stray = {"id": "msg_stray", "object": "thread.message", "created_at": 1, "metadata": {}}
    with mirror.write() as session:
        write_page(
            session,
            thread_id,
            [prepare(stray, thread_id)],
            direction="asc",
            ties="reverse",
            prev=None,
            now=datetime.now(UTC),
        )
    assert (await sync(emulator, mirror)).counts.added == 260
    report = await compared_in_full(emulator, mirror, monkeypatch)
    assert report.counts.deleted == 1
    memo = memo_of(mirror, thread_id)
    assert memo is not None
    assert memo.order == "asc"
    assert exported(mirror, thread_id) == truth(emulator, thread_id)


async def test_a_resumed_first_sync_records_no_memo(emulator: Emulator, mirror: Mirror) -> None:
    """Its earlier pages were walked by another pass: it has not seen the whole thread."""
    (thread_id,) = seeded(emulator, mirror, seed=8, threads=1, messages=260)
    real = emulator.list_messages

    def failing(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("after") and kwargs.get("order") == "desc":
            raise WireError(503, "busy", type_="server_error")  # until retries run out
        return real(*args, **kwargs)

    emulator.list_messages = failing  # type: ignore[method-assign]
    assert not (await sync(emulator, mirror)).ok
    emulator.list_messages = real  # type: ignore[method-assign]
    assert len(exported(mirror, thread_id)) == 100
    assert (await sync(emulator, mirror)).ok
    assert exported(mirror, thread_id) == truth(emulator, thread_id)
    assert memo_of(mirror, thread_id) is None


async def test_a_first_sync_above_the_census_limit_stops_hashing_and_records_no_memo(
    emulator: Emulator, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Such a thread is compared page by page, never replayed: its pages need no hash."""
    monkeypatch.setattr(Census, "LIMIT", 100)
    (thread_id,) = seeded(emulator, mirror, seed=8, threads=1, messages=260)
    hashed = {"n": 0}
    real = Wire.list_unless

    async def counted(self: Wire, **kwargs: Any) -> Any:
        hashed["n"] += 1
        return await real(self, **kwargs)

    monkeypatch.setattr(Wire, "list_unless", counted)
    report = await sync(emulator, mirror, page_limit=20)  # 13 pages
    assert report.ok
    assert memo_of(mirror, thread_id) is None
    # Past 100 messages (page 6) it stops; page 7 was asked for before it knew.
    assert hashed["n"] == 7
    assert exported(mirror, thread_id) == truth(emulator, thread_id)


async def test_a_failed_read_after_a_walk_that_wrote_only_loses_its_memo(
    emulator: Emulator, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    (thread_id,) = seeded(emulator, mirror, seed=8, threads=1, messages=260)
    assert (await sync(emulator, mirror)).ok
    forget_memo(mirror, thread_id)
    emulator.delete_message(thread_id, truth(emulator, thread_id)[7]["id"])
    reads = {"n": 0}
    real = FullWalk.census

    async def second_fails(self: FullWalk) -> Any:
        reads["n"] += 1
        if reads["n"] == 2:  # the one after the walk's writes (the first is the walk's own)
            raise sqlite3.OperationalError("disk I/O error")
        return await real(self)

    monkeypatch.setattr(FullWalk, "census", second_fails)
    report = await sync(emulator, mirror, full=True)
    assert report.ok
    assert report.counts.deleted == 1
    assert reads["n"] == 2
    assert memo_of(mirror, thread_id) is None
    assert exported(mirror, thread_id) == truth(emulator, thread_id)
