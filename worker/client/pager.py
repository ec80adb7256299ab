"""Walking the project's threads page by page (discovery), guarded against pages that do not
advance: a cursor that comes round again, or a page made only of threads already listed (a server
ignoring the cursor), raises :class:`PagingError` instead of looping for ever.

A thread's messages are not walked here: the sync's walks (``worker/sync/``) check every cursor
themselves and fall back to a full walk instead of failing.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from worker.client.api import Order
from worker.client.models import MessagePage
from worker.errors import AuthError, PagingError, PermanentError


class ThreadLister(Protocol):
    """What thread discovery needs from a client (Foundry classic's ``GET /threads``)."""

    async def list_threads(
        self, *, limit: int = 100, order: Order = "desc", after: str | None = None
    ) -> MessagePage: ...


async def iter_thread_pages(
    client: ThreadLister, *, order: Order = "asc", limit: int = 100
) -> AsyncGenerator[MessagePage, None]:
    """Every page of the project's threads, following ``after`` until ``has_more`` is false.

    Guarded against every id seen so far (discovery keeps them all anyway): a cursor that comes
    round again raises :class:`PagingError`. A page overlapping the ones before in part is
    yielded; the caller drops the repeats.

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
