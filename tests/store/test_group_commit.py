"""Group commit: writes that wait share a transaction, and each piece stands or falls alone."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from sqlalchemy import event, text
from sqlmodel import Session

from worker.store import db
from worker.store.db import STORE_ERRORS, Mirror
from worker.store.repo import add_threads, tracked

pytestmark = pytest.mark.anyio


def _commits(mirror: Mirror) -> list[None]:
    seen: list[None] = []
    event.listen(mirror.engine, "commit", lambda _conn: seen.append(None))
    return seen


def _track(thread_id: str, session: Session) -> None:
    add_threads(session, [thread_id])


def _fail(thread_id: str, session: Session) -> None:
    add_threads(session, [thread_id])
    raise ValueError(f"{thread_id} failed")


def _tracked(mirror: Mirror, *ids: str) -> set[str]:
    with mirror.read() as session:
        return set(tracked(session, list(ids)))


class _Held:
    """A first write that holds its transaction open until released (from the test's side)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, session: Session) -> None:
        self.started.set()
        assert self.release.wait(10), "the test never released the first write"
        add_threads(session, ["first"])


def _nearly_full(tmp_path: Path) -> Mirror:
    """A SQLite mirror that may grow by three pages only: a stand-in for a disk that fills up."""
    mirror = Mirror(f"sqlite:///{tmp_path / 'm.db'}")
    with mirror.read() as session:
        pages = int(session.execute(text("PRAGMA page_count")).scalar_one())
    event.listen(
        mirror.engine, "connect", lambda c, _: c.execute(f"PRAGMA max_page_count={pages + 3}")
    )
    mirror.engine.dispose()
    return mirror


def _fill_disk(session: Session) -> None:
    """A statement the nearly full mirror has no room for."""
    session.connection().exec_driver_sql(
        "INSERT INTO mirror_meta (key, value, updated_at) VALUES ('x', ?, '2026-01-01')",
        ("y" * 200_000,),
    )


async def _while_held(mirror: Mirror, queue: Callable[[anyio.abc.TaskGroup], None]) -> None:
    """Run ``queue`` while a first grouped write is in its transaction, then let it finish."""
    held = _Held()
    async with anyio.create_task_group() as tg:
        tg.start_soon(mirror.write_grouped, held)
        await anyio.to_thread.run_sync(held.started.wait, 10)
        queue(tg)
        await anyio.wait_all_tasks_blocked()  # every queued write is waiting for its turn
        held.release.set()


async def test_writes_that_arrive_during_a_commit_share_the_next_one(mirror: Mirror) -> None:
    commits = _commits(mirror)

    def queue(tg: anyio.abc.TaskGroup) -> None:
        for i in range(4):
            tg.start_soon(mirror.write_grouped, partial(_track, f"t{i}"))

    await _while_held(mirror, queue)
    assert len(commits) == 2  # the first alone, then the four that waited together
    assert _tracked(mirror, "first", "t0", "t1", "t2", "t3") == {"first", "t0", "t1", "t2", "t3"}


async def test_a_failing_piece_rolls_back_alone_and_its_caller_sees_why(mirror: Mirror) -> None:
    errors: list[BaseException] = []

    async def attempt(fn: Callable[[Session], None]) -> None:
        try:
            await mirror.write_grouped(fn)
        except ValueError as exc:
            errors.append(exc)

    def queue(tg: anyio.abc.TaskGroup) -> None:
        tg.start_soon(attempt, partial(_track, "good1"))
        tg.start_soon(attempt, partial(_fail, "bad"))
        tg.start_soon(attempt, partial(_track, "good2"))

    await _while_held(mirror, queue)
    assert [str(e) for e in errors] == ["bad failed"]
    assert _tracked(mirror, "good1", "bad", "good2") == {"good1", "good2"}


async def test_a_piece_without_a_savepoint_keeps_what_it_wrote_when_it_fails(
    tmp_path: Path,
) -> None:
    """``isolated=False`` (SQLite sync pages): no SAVEPOINT is issued for the piece; if it
    fails, its caller sees why, and what it wrote before failing is committed with the rest."""
    mirror = Mirror(f"sqlite:///{tmp_path / 'm.db'}")
    statements: list[str] = []
    event.listen(
        mirror.engine, "connect", lambda conn, _: conn.set_trace_callback(statements.append)
    )
    mirror.engine.dispose()  # reconnect, traced
    errors: list[BaseException] = []

    async def attempt(fn: Callable[[Session], None], *, isolated: bool) -> None:
        try:
            await mirror.write_grouped(fn, isolated=isolated)
        except ValueError as exc:
            errors.append(exc)

    def queue(tg: anyio.abc.TaskGroup) -> None:
        statements.clear()
        tg.start_soon(partial(attempt, partial(_track, "plain"), isolated=False))
        tg.start_soon(partial(attempt, partial(_fail, "half"), isolated=False))
        tg.start_soon(partial(attempt, partial(_fail, "guarded"), isolated=True))
        mirror.queue_grouped(partial(_track, "queued"), isolated=False)

    try:
        await _while_held(mirror, queue)
        await mirror.flush_grouped()
        assert sorted(str(e) for e in errors) == ["guarded failed", "half failed"]
        assert _tracked(mirror, "plain", "half", "guarded", "queued") == {"plain", "half", "queued"}
        savepoints = [s for s in statements if s.upper().startswith("SAVEPOINT")]
        assert len(savepoints) == 2  # the held first write's and "guarded"'s, none for the others
    finally:
        mirror.dispose()


async def test_a_cancelled_caller_still_gets_its_write_committed(mirror: Mirror) -> None:
    scopes: list[anyio.CancelScope] = []

    async def cancelled_writer() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await mirror.write_grouped(partial(_track, "late"))

    held = _Held()
    async with anyio.create_task_group() as tg:
        tg.start_soon(mirror.write_grouped, held)
        await anyio.to_thread.run_sync(held.started.wait, 10)
        tg.start_soon(cancelled_writer)
        await anyio.wait_all_tasks_blocked()
        scopes[0].cancel()
        held.release.set()
    assert _tracked(mirror, "late") == {"late"}


async def test_queued_work_rides_with_the_next_write_or_the_flush(mirror: Mirror) -> None:
    commits = _commits(mirror)
    mirror.queue_grouped(partial(_track, "q1"))
    assert not commits  # queued, not written
    await mirror.write_grouped(partial(_track, "w1"))
    assert len(commits) == 1  # one transaction carried both
    assert _tracked(mirror, "q1", "w1") == {"q1", "w1"}

    mirror.queue_grouped(partial(_track, "q2"))
    mirror.queue_grouped(partial(_fail, "q3"))
    commits.clear()
    with pytest.raises(ValueError, match="q3 failed"):
        await mirror.flush_grouped()
    await mirror.flush_grouped()  # nothing left, nothing raised again
    assert len(commits) == 1
    assert _tracked(mirror, "q2", "q3") == {"q2"}


async def test_when_sqlite_drops_the_transaction_no_piece_is_reported_committed(
    tmp_path: Path,
) -> None:
    """A full disk makes SQLite roll back the whole transaction, not only the failing piece:
    the pieces before it must fail too, and none after it may commit on its own."""
    mirror = _nearly_full(tmp_path)
    errors: dict[str, BaseException] = {}

    async def attempt(name: str, fn: Callable[[Session], None]) -> None:
        try:
            await mirror.write_grouped(fn)
        except Exception as exc:
            errors[name] = exc

    def queue(tg: anyio.abc.TaskGroup) -> None:
        tg.start_soon(attempt, "before", partial(_track, "before"))
        tg.start_soon(attempt, "huge", _fill_disk)
        tg.start_soon(attempt, "after", partial(_track, "after"))

    await _while_held(mirror, queue)
    assert set(errors) == {"before", "huge", "after"}
    assert "full" in str(errors["huge"])  # the cause, not the failed savepoint rollback
    assert _tracked(mirror, "first", "before", "after") == {"first"}
    mirror.dispose()


async def test_many_writers_all_get_committed(mirror: Mirror) -> None:
    """Writers arriving at staggered moments, with detached work queued among them, all get
    their turn: none is left waiting, none is written twice, and the flush commits the rest."""
    ids = [f"t{i:03d}" for i in range(120)]

    async def write(i: int, thread_id: str) -> None:
        for _ in range(i % 5):  # arrive at staggered moments
            await anyio.lowlevel.checkpoint()
        await mirror.write_grouped(partial(_track, thread_id))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for i, thread_id in enumerate(ids):
                tg.start_soon(write, i, thread_id)
                if i % 10 == 0:
                    mirror.queue_grouped(partial(_track, f"q{i:03d}"))
        await mirror.flush_grouped()
    queued = [f"q{i:03d}" for i in range(0, 120, 10)]
    assert _tracked(mirror, *ids, *queued) == {*ids, *queued}
    assert mirror.grouped_waiting == 0


def test_the_writer_keeps_a_larger_page_cache_than_readers(tmp_path: Path) -> None:
    mirror = Mirror(f"sqlite:///{tmp_path / 'm.db'}")
    try:

        def cache(session: Session) -> int:
            return int(session.execute(text("PRAGMA cache_size")).scalar_one())

        for _ in range(2):  # and back again on the same pooled connection
            with mirror.write() as session:
                assert cache(session) == -db.WRITE_CACHE_KIB
            with mirror.read() as session:
                assert cache(session) == -db.READ_CACHE_KIB
        assert db.WRITE_CACHE_KIB > db.READ_CACHE_KIB
    finally:
        mirror.dispose()


def test_lock_threads_takes_each_threads_lock_for_the_transaction(pg_url: str) -> None:
    """PostgreSQL: a writer of thread ``t1`` waits while another transaction holds ``t1``'s lock
    (here: gives up at its lock timeout), and takes a lock nobody holds at once; the locks end
    with the transaction."""
    mirror = Mirror(pg_url)
    try:
        with mirror.write() as holder:
            db.lock_threads(holder, ["t1", "t0"])
            with mirror.write() as other:
                other.execute(text("SET LOCAL lock_timeout = '200ms'"))
                db.lock_threads(other, ["t2"])  # nobody holds it
            with mirror.write() as other:
                other.execute(text("SET LOCAL lock_timeout = '200ms'"))
                with pytest.raises(STORE_ERRORS, match="lock timeout"):
                    db.lock_threads(other, ["t3", "t1"])
                other.rollback()
        with mirror.write() as after:  # the holder committed: its locks are gone
            after.execute(text("SET LOCAL lock_timeout = '200ms'"))
            db.lock_threads(after, ["t1", "t0"])
    finally:
        mirror.dispose()


async def test_when_sqlite_drops_the_transaction_under_pieces_run_together_none_commits(
    tmp_path: Path,
) -> None:
    """Pieces run together (``together``) whose statement fills the disk: SQLite rolls the whole
    transaction back, so they and the piece before them all fail, and none is retried alone
    into a transaction of its own."""
    mirror = _nearly_full(tmp_path)
    ran: list[str] = []

    def huge(session: Session, fns: list[Callable[[Session], None]]) -> None:
        ran.append("together")
        _fill_disk(session)

    try:
        mirror.queue_grouped(partial(_track, "before"))
        mirror.queue_grouped(partial(_track, "q1"), together=huge)
        mirror.queue_grouped(partial(_track, "q2"), together=huge)
        with pytest.raises(STORE_ERRORS, match="full"):
            await mirror.flush_grouped()
        assert ran == ["together"]  # once for both; no piece ran alone afterwards
        assert _tracked(mirror, "before", "q1", "q2") == set()
    finally:
        mirror.dispose()
