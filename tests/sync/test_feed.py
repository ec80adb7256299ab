"""The page feed's background requests: a request still in flight when the walk ends is
cancelled at once; a walk that took every answer ends without cancelling anything."""

from __future__ import annotations

from typing import Any, cast

import anyio
import anyio.lowlevel
import pytest

from worker.client import ApiClient, MessagePage
from worker.sync.feed import Wire, feeding, refetching
from worker.sync.outcome import ThreadOutcome

pytestmark = pytest.mark.anyio


class HeldWire(Wire):
    """A wire whose answers wait for ``release``; records which requests were cancelled."""

    def __init__(self) -> None:
        super().__init__(
            client=cast(ApiClient, None),
            thread_id="thread_1",
            limit=100,
            outcome=ThreadOutcome("thread_1", "synced"),
        )
        self.release = anyio.Event()
        self.cancelled: list[str] = []

    async def _held(self, what: str) -> None:
        try:
            await self.release.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(what)
            raise

    async def list_page(
        self, *, order: Any, after: str | None = None, limit: int | None = None
    ) -> MessagePage:
        await self._held(f"list after {after}")
        return MessagePage(data=[], first_id=None, last_id=None, has_more=False)

    async def get(self, message_id: str) -> dict[str, Any]:
        await self._held(f"get {message_id}")
        return {"id": message_id}


async def test_a_page_in_flight_when_the_walk_ends_is_cancelled() -> None:
    wire = HeldWire()
    async with feeding(wire, "asc") as feed:  # waiting for the held answer would hang here
        feed.fetch("msg_1")
        await anyio.lowlevel.checkpoint()  # the request is under way
        assert feed.pending
    assert wire.cancelled == ["list after msg_1"]


async def test_a_walk_that_took_its_pages_ends_with_nothing_pending() -> None:
    wire = HeldWire()
    wire.release.set()
    async with feeding(wire, "asc") as feed:
        assert not feed.pending  # nothing fetched yet
        feed.fetch(None)
        assert feed.pending
        has_more, msgs = await feed.take()
        assert (has_more, msgs) == (False, [])
        assert not feed.pending
    assert wire.cancelled == []


async def test_early_gets_not_asked_for_are_cancelled_the_others_not() -> None:
    wire = HeldWire()
    async with refetching(wire, ["msg_1", "msg_2"]) as early:
        await anyio.lowlevel.checkpoint()
        assert early.pending
    assert sorted(wire.cancelled) == ["get msg_1", "get msg_2"]

    wire = HeldWire()
    wire.release.set()
    async with refetching(wire, ["msg_1"]) as early:
        assert await early.get("msg_1") == {"id": "msg_1"}
        assert not early.pending
    assert wire.cancelled == []


async def test_nothing_to_refetch_sends_nothing_early_and_asks_when_needed() -> None:
    """No ids: no task group (see ``refetching``), yet the same answers and errors."""
    wire = HeldWire()
    async with refetching(wire, []) as early:
        assert not early.pending
        wire.release.set()
        assert await early.get("msg_9") == {"id": "msg_9"}  # asked now, of the wire itself
    assert wire.cancelled == []

    class Boom(Exception):
        pass

    with pytest.raises(Boom):  # raised as itself, as with a task group (not in a group)
        async with refetching(HeldWire(), []):
            raise Boom
