"""The page writer's guard: a check run first in each of a pass's write transactions."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlmodel import Session

from worker.emulator import Emulator, ManualClock
from worker.errors import WriteRefused
from worker.store.db import Mirror
from worker.store.repo import add_threads
from worker.sync.thread_pass import ThreadPass
from worker.sync.ties import TieConvention
from worker.testing import emulated_client

pytestmark = pytest.mark.anyio


class Fenced(Exception):
    """What a guard raises when this pass may no longer write its thread."""


async def test_a_guard_that_refuses_writes_nothing_and_fails_the_pass(mirror: Mirror) -> None:
    """A guard raising in a page's transaction leaves no row of that page and no cursor advance
    (it runs before the page's statements, on either backend); the pass fails with the kind of
    error only, and its closing state is refused too (raised by the flush)."""
    emulator = Emulator(clock=ManualClock(), seed=3)
    (thread_id,) = emulator.seed(seed=3, threads=1, messages=30)
    with mirror.write() as session:
        add_threads(session, [thread_id])
    checked: list[str] = []

    def guard(session: Session) -> None:
        checked.append(thread_id)
        assert session.in_transaction()
        raise Fenced("another process holds this thread")

    async with emulated_client(emulator) as client:
        one = ThreadPass(
            client, mirror, thread_id, ties=TieConvention(mirror), page_limit=10, guard=guard
        )
        outcome = await one.run()
    assert outcome.result == "failed"
    assert outcome.error is not None
    assert "Fenced" in outcome.error
    assert checked == [thread_id]  # the first page's transaction: nothing after it was tried
    with pytest.raises(Fenced):
        await mirror.flush_grouped()  # the closing state, refused by the same guard
    assert checked == [thread_id, thread_id]
    with mirror.read() as session:
        rows = session.execute(text("SELECT count(*) FROM message")).scalar_one()
        pages = session.execute(text("SELECT pages FROM sync_state")).scalar_one()
    assert (rows, pages) == (0, 0)


async def test_a_guard_that_allows_sees_every_write_transaction(mirror: Mirror) -> None:
    """Each page's transaction and the closing state's run the guard once."""
    emulator = Emulator(clock=ManualClock(), seed=3)
    (thread_id,) = emulator.seed(seed=3, threads=1, messages=30)
    with mirror.write() as session:
        add_threads(session, [thread_id])
    checked: list[str] = []
    async with emulated_client(emulator) as client:
        one = ThreadPass(
            client,
            mirror,
            thread_id,
            ties=TieConvention(mirror),
            page_limit=10,
            guard=lambda session: checked.append(thread_id),
        )
        outcome = await one.run()
        await mirror.flush_grouped()
    assert outcome.ok, outcome.error
    assert outcome.counts.added == 30
    with mirror.read() as session:
        pages = session.execute(text("SELECT pages FROM sync_state")).scalar_one()
    assert len(checked) == pages + 1  # every page's transaction, and the closing state's


class _Lost:
    """A lease that holds for ``pages`` write transactions, then is refused everywhere."""

    def __init__(self, pages: int) -> None:
        self.left = pages
        self.requests_after_loss = 0

    def guard(self, session: Session, thread_id: str) -> None:
        self.left -= 1
        if self.left < 0:
            raise WriteRefused(f"{thread_id} is held by another process")

    def holds(self, session: Session, thread_id: str) -> bool:
        return self.left >= 0

    def ensure(self, thread_id: str) -> None:
        if self.left < 0:
            self.requests_after_loss += 1
            raise WriteRefused(f"{thread_id} is held by another process")


async def test_a_lost_lease_ends_the_pass_lost_and_leaves_the_closing_state_alone(
    mirror: Mirror,
) -> None:
    """A lease refused after two pages: those two pages stay, the third is not written, no
    request goes out once the loss is known, the pass ends ``lost``, and its closing state is
    skipped without failing the flush (the new holder writes the thread's state)."""
    emulator = Emulator(clock=ManualClock(), seed=3)
    (thread_id,) = emulator.seed(seed=3, threads=1, messages=30)
    with mirror.write() as session:
        add_threads(session, [thread_id])
    lease = _Lost(pages=2)
    async with emulated_client(emulator) as client:
        one = ThreadPass(
            client, mirror, thread_id, ties=TieConvention(mirror), page_limit=10, lease=lease
        )
        outcome = await one.run()
        await mirror.flush_grouped()  # raises nothing: the refused closing state is skipped
    assert outcome.result == "lost"
    assert lease.requests_after_loss <= 1  # the first request after the loss is refused, no more
    with mirror.read() as session:
        rows = session.execute(text("SELECT count(*) FROM message")).scalar_one()
        pages, last = session.execute(text("SELECT pages, last_sync_at FROM sync_state")).one()
    assert rows == 20
    assert (pages, last) == (2, None)
