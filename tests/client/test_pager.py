"""The pager: complete walks in both orders and both cursor directions, and loop refusal."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from tests.client.conftest import list_slice, make_client, page_body
from worker.client import MessagePage, iter_pages
from worker.client.api import Order
from worker.errors import PagingError
from worker.testing import FakeClock

IDS = [f"msg_{n:03d}" for n in range(23)]  # oldest first


@dataclass
class FakeLister:
    """A cursor-paged server over ``ids``; ``override`` can replace its answer per call number."""

    ids: list[str]
    calls: list[dict[str, Any]] = field(default_factory=list)
    override: dict[int, MessagePage] = field(default_factory=dict)

    async def list_messages(
        self,
        thread_id: str,
        *,
        limit: int = 100,
        order: Order = "asc",
        after: str | None = None,
        before: str | None = None,
        run_id: str | None = None,
    ) -> MessagePage:
        self.calls.append({"after": after, "before": before, "order": order, "run_id": run_id})
        if len(self.calls) in self.override:
            return self.override[len(self.calls)]
        page, more = list_slice(self.ids, order=order, after=after, before=before, limit=limit)
        return _page(page, more)


def _page(ids: list[str], has_more: bool) -> MessagePage:
    return MessagePage(
        data=[{"id": i} for i in ids],
        first_id=ids[0] if ids else None,
        last_id=ids[-1] if ids else None,
        has_more=has_more,
    )


async def _walk(lister: FakeLister, **kwargs: Any) -> list[list[str]]:
    return [[m["id"] for m in page.data] async for page in iter_pages(lister, "t", **kwargs)]


@pytest.mark.anyio
@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_full_walk_with_after(order: Order) -> None:
    """From the head, `after` walks every message once, in the requested order."""
    lister = FakeLister(IDS)
    pages = await _walk(lister, order=order, limit=5)
    flat = [i for page in pages for i in page]
    assert flat == (IDS if order == "asc" else IDS[::-1])
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert all(call["before"] is None for call in lister.calls)


@pytest.mark.anyio
@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_resume_after_cursor(order: Order) -> None:
    """Started with `after`, the walk yields exactly what follows the cursor."""
    seq = IDS if order == "asc" else IDS[::-1]
    lister = FakeLister(IDS)
    pages = await _walk(lister, order=order, after=seq[9], limit=4)
    assert [i for page in pages for i in page] == seq[10:]


@pytest.mark.anyio
@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_walk_backwards_with_before(order: Order) -> None:
    """Started with `before`, each next page uses before=<first id>; never sends after too."""
    seq = IDS if order == "asc" else IDS[::-1]
    lister = FakeLister(IDS)
    pages = await _walk(lister, order=order, before=seq[17], limit=5)
    assert all(page == sorted(page, reverse=order == "desc") for page in pages)
    assert [i for page in reversed(pages) for i in page] == seq[:17]
    assert all(call["after"] is None for call in lister.calls)
    assert [call["before"] for call in lister.calls] == [seq[17], seq[12], seq[7], seq[2]]


@pytest.mark.anyio
async def test_empty_page_ends_even_if_has_more() -> None:
    """An empty page ends the walk, whatever has_more says, and is not yielded."""
    lister = FakeLister(IDS, override={2: _page([], True)})
    pages = await _walk(lister, order="asc", limit=5)
    assert pages == [IDS[:5]]


@pytest.mark.anyio
async def test_server_ignoring_cursor_is_refused() -> None:
    """A server answering every cursor with the head page raises PagingError, not a loop."""
    head = _page(IDS[:5], True)
    lister = FakeLister(IDS, override=dict.fromkeys(range(1, 50), head))
    with pytest.raises(PagingError, match="repeats the previous page"):
        await _walk(lister, order="asc", limit=5)
    assert len(lister.calls) == 2


@pytest.mark.anyio
async def test_cycle_of_pages_is_refused() -> None:
    """Pages that cycle A, B, A... are caught by the repeated cursor."""
    a, b = _page(IDS[0:3], True), _page(IDS[3:6], True)
    lister = FakeLister(IDS, override={1: a, 2: b, 3: a, 4: b, 5: a})
    with pytest.raises(PagingError, match="came round again"):
        await _walk(lister, order="asc", limit=3)
    assert len(lister.calls) == 3


@pytest.mark.anyio
async def test_page_ending_on_start_cursor_is_refused() -> None:
    """A page whose last id is the cursor we started from would restart the walk: refused."""
    lister = FakeLister(IDS, override={1: _page(IDS[3:6], True)})
    with pytest.raises(PagingError):
        await _walk(lister, order="asc", after=IDS[5], limit=3)


@pytest.mark.anyio
async def test_after_and_before_together_rejected() -> None:
    """Both cursors at once is a caller error."""
    with pytest.raises(ValueError):
        await _walk(FakeLister(IDS), order="asc", after="a", before="b")


@pytest.mark.anyio
@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_walk_through_the_real_client(order: Order) -> None:
    """End to end over HTTP: the client's list answers feed the pager; retries are invisible."""
    failures = iter([True, False] * 100)

    def handler(request: httpx.Request) -> httpx.Response:
        if next(failures):
            return httpx.Response(503)
        p = request.url.params
        assert not ("after" in p and "before" in p)
        page, more = list_slice(
            IDS,
            order=p["order"],
            after=p.get("after"),
            before=p.get("before"),
            limit=int(p["limit"]),
        )
        return httpx.Response(200, content=orjson.dumps(page_body(page, more, "t")))

    async with make_client(handler, FakeClock()) as client:
        ids = [
            m["id"]
            async for page in iter_pages(client, "t", order=order, limit=10)
            for m in page.data
        ]
    assert ids == (IDS if order == "asc" else IDS[::-1])
