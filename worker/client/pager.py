"""Walking a thread's messages page by page, guarded against pages that do not advance.

Walking with ``after`` follows the requested order (the next page starts after the last id of the
current one). Started with ``before``, the walk goes the other way: each next request uses
``before`` = the first id of the current page; pages still list their messages in ``order``.
``after`` and ``before`` are never sent together (openai-python does that when auto-iterating a
``before`` listing, and the answer is undefined).

The loop guard keeps every cursor used in this walk (one id per page, so 1,000 ids for a
100,000-message thread at 100 a page) and the ids of the previous page only: memory stays flat in
the number of messages. A repeated cursor, or a page made only of the previous page's ids (a server
ignoring the cursor), raises :class:`PagingError` instead of looping for ever.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

from worker.client.api import Order
from worker.client.models import MessagePage
from worker.errors import AuthError, PagingError, PermanentError


class MessageLister(Protocol):
    """What the pager needs from a client (an :class:`ApiClient`, or a fake in tests)."""

    async def list_messages(
        self,
        thread_id: str,
        *,
        limit: int = 100,
        order: Order = "asc",
        after: str | None = None,
        before: str | None = None,
        run_id: str | None = None,
    ) -> MessagePage: ...


async def iter_pages(
    client: MessageLister,
    thread_id: str,
    *,
    order: Order,
    after: str | None = None,
    before: str | None = None,
    limit: int = 100,
    run_id: str | None = None,
) -> AsyncIterator[MessagePage]:
    """Yield each non-empty page until the server says there is no more; an empty page ends it."""
    if after is not None and before is not None:
        raise ValueError("give after or before, not both")
    backwards = before is not None
    cursor = before if backwards else after
    cursors: set[str] = set() if cursor is None else {cursor}
    previous: frozenset[str] = frozenset()
    while True:
        page = await client.list_messages(
            thread_id,
            limit=limit,
            order=order,
            after=None if backwards else cursor,
            before=cursor if backwards else None,
            run_id=run_id,
        )
        if not page.data:
            return
        ids = [message["id"] for message in page.data]
        if previous.issuperset(ids):
            raise PagingError(
                f"thread {thread_id}: the page after cursor {cursor} repeats the previous page;"
                " the server is not advancing"
            )
        yield page
        if not page.has_more:
            return
        cursor = ids[0] if backwards else ids[-1]
        if cursor in cursors:
            raise PagingError(
                f"thread {thread_id}: cursor {cursor} came round again; the pages loop"
            )
        cursors.add(cursor)
        previous = frozenset(ids)


class ThreadLister(Protocol):
    """What thread discovery needs from a client (Foundry classic's ``GET /threads``)."""

    async def list_threads(
        self, *, limit: int = 100, order: Order = "desc", after: str | None = None
    ) -> MessagePage: ...


async def iter_thread_pages(
    client: ThreadLister, *, order: Order = "asc", limit: int = 100
) -> AsyncGenerator[MessagePage, None]:
    """Every page of the project's threads, following ``after`` until ``has_more`` is false.

    Guarded like :func:`iter_pages`, against every id seen so far rather than the previous
    page's (discovery keeps them all anyway): a cursor that comes round again raises
    :class:`PagingError`. A page overlapping the ones before in part is yielded; the caller
    drops the repeats.

    The thread a cursor names may be deleted between two requests, and what a server answers
    then is unknown (API.md section 11): 404, 400, an empty page, the list from its head. Each
    of those is met by stepping back to the previous thread of the last page as the cursor, so
    the walk still reaches the end; only when no thread of that page is left does it raise.
    """
    cursor: str | None = None
    cursors: set[str] = set()
    seen: set[str] = set()
    fallbacks: list[str] = []  # the last page's earlier ids, to step back to
    stepped_back = False
    while True:
        try:
            page = await client.list_threads(limit=limit, order=order, after=cursor)
        except PermanentError as exc:
            if cursor is None or not _cursor_refused(exc) or not fallbacks:
                raise
            cursor, stepped_back = fallbacks.pop(), True
            continue
        ids = [thread["id"] for thread in page.data]
        if not ids:
            if cursor is None or not fallbacks:
                return
            cursor, stepped_back = fallbacks.pop(), True  # an empty page after "has more"
            continue
        if seen.issuperset(ids):
            if stepped_back:
                if not page.has_more:
                    return  # stepped back onto threads already listed: that was the end
            elif fallbacks:
                cursor, stepped_back = fallbacks.pop(), True  # the cursor was ignored
                continue
            else:
                raise PagingError(
                    f"listing threads: the page after cursor {cursor} lists only threads"
                    " already listed; the server is not advancing"
                )
        else:
            seen.update(ids)
            yield page
        if not page.has_more:
            return
        cursor, stepped_back = ids[-1], False
        if cursor in cursors:
            raise PagingError(f"listing threads: cursor {cursor} came round again; the pages loop")
        cursors.add(cursor)
        fallbacks = ids[:-1]


def _cursor_refused(exc: PermanentError) -> bool:
    """A 404 or 400 answering a request with a cursor: the thread it names may be gone."""
    return not isinstance(exc, AuthError) and exc.status in (400, 404)
