"""The page feed: a walk's requests, with the next page fetched while the current one is stored.

:class:`Wire` is the thread's requests (each counted on the pass's outcome). :class:`PageFeed`
fetches a walk's pages one ahead and tells a lost cursor (the server refusing it as a cursor) from
other errors; :class:`Refetches` sends the GETs of messages stored as in progress early, beside an
ordinary pass's probe. Their background requests never raise: each hands its error to whoever asks
for its answer, so a walk sees errors where it would have seen them without the overlap.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, TypeVar, cast

import anyio
from anyio.abc import TaskGroup

from worker.client import ApiClient, MessagePage
from worker.client.models import Listed, message_page
from worker.errors import NotFoundError, PermanentError
from worker.sync.plan import Incoming, prepare

if TYPE_CHECKING:
    from worker.sync.outcome import ThreadOutcome

H = TypeVar("H", bound="_Helper")  # a background helper's type (see _background)
Order = Literal["asc", "desc"]


class CursorLost(Exception):
    """The message a cursor names is gone (or the server stopped honouring the cursor)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Hit(NamedTuple):
    """A page whose body was the one expected (a walk memo's), left unparsed."""

    body: bytes
    sha: bytes


class Page(NamedTuple):
    has_more: bool
    msgs: list[Incoming]
    sha: bytes | None  # the body's SHA-256 where it was asked for (full walks)


class Wire:
    """One thread's requests, each counted on the pass's outcome."""

    def __init__(
        self,
        client: ApiClient,
        thread_id: str,
        limit: int,
        outcome: ThreadOutcome,
        *,
        before: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.thread_id = thread_id
        self.limit = limit
        self._outcome = outcome
        self._before = before  # replicas: refuses once the lease is known lost (WriteRefused)

    def _sending(self) -> None:
        if self._before is not None:
            self._before()
        self._outcome.requests += 1

    async def list_page(
        self, *, order: Order, after: str | None = None, limit: int | None = None
    ) -> MessagePage:
        self._sending()
        page = await self.client.list_messages(
            self.thread_id, limit=limit or self.limit, order=order, after=after
        )
        self._outcome.answered = True
        return page

    async def list_unless(self, *, order: Order, after: str | None, unless: bytes | None) -> Listed:
        self._sending()
        listed = await self.client.list_messages_unless(
            self.thread_id, unless, limit=self.limit, order=order, after=after
        )
        self._outcome.answered = True
        return listed

    async def get(self, message_id: str) -> dict[str, Any]:
        self._sending()
        message = await self.client.get_message(self.thread_id, message_id)
        self._outcome.answered = True
        return message

    async def exists(self, message_id: str) -> bool:
        try:
            await self.get(message_id)
        except NotFoundError:
            return False
        return True

    def prepare(self, page: MessagePage) -> list[Incoming]:
        return [prepare(obj, self.thread_id) for obj in page.data]


class PageFeed:
    """Fetches a walk's next page while the current one is being stored.

    A walk's next cursor is known as soon as a page is parsed, so the request for page k+1 runs
    while page k's transaction commits in a worker thread: the wire and the database overlap
    instead of adding up.
    """

    def __init__(self, tg: TaskGroup, wire: Wire, order: Order) -> None:
        self._tg = tg
        self._wire = wire
        self._order = order
        self._done = anyio.Event()
        self._page: Page | Hit | None = None
        self._error: Exception | None = None
        self._after: str | None = None
        self._fetching = False  # a fetch was started (then _done tells whether it ended)
        self.hashed = False  # whether the pages fetched next are hashed (see fetch)

    @property
    def pending(self) -> bool:
        """Whether a request is in flight (what ending the walk has to cancel)."""
        return self._fetching and not self._done.is_set()

    def fetch(
        self, after: str | None, *, hashed: bool = False, unless: bytes | None = None
    ) -> None:
        """Request the page after ``after``; ``hashed``: with its body's SHA-256 (and this page
        and the following ones), and left unparsed if that is ``unless``."""
        self._done = anyio.Event()
        self._page, self._error, self._after = None, None, after
        self._fetching = True
        self.hashed = hashed or unless is not None
        self._tg.start_soon(self._run, after, self.hashed, unless)

    async def _run(self, after: str | None, hashed: bool, unless: bytes | None) -> None:
        try:
            if hashed:
                listed = await self._wire.list_unless(order=self._order, after=after, unless=unless)
                if listed.page is None:
                    assert listed.body is not None
                    self._page = Hit(listed.body, listed.sha)
                    return
                page, sha = listed.page, listed.sha
            else:
                page, sha = await self._wire.list_page(order=self._order, after=after), None
            # Prepared at once: a waiting page is kept as its messages' text and columns, not as
            # parsed objects (several times the size, and eight passes each keep one waiting).
            self._page = Page(page.has_more, self._wire.prepare(page), sha)
        except Exception as exc:  # handed to the walk, which decides what it means
            self._error = exc
        finally:
            self._done.set()

    async def take(self) -> tuple[bool, list[Incoming]]:
        """The fetched page's ``has_more`` and messages; starts fetching the next page if any.

        A request with a cursor that the server refuses as a cursor raises :class:`CursorLost`.
        """
        page = await self.take_page()
        assert isinstance(page, Page)
        return page.has_more, page.msgs

    async def take_page(self, *, follow: bool = True) -> Page | Hit:
        """As :meth:`take`; a :class:`Hit` is returned as it is, and fetches nothing next
        (nor does any page without ``follow``)."""
        await self._done.wait()
        if self._error is not None:
            exc = self._error
            # 400 or 404 to a request with a cursor: the message it names is gone.
            if (
                isinstance(exc, PermanentError)
                and exc.status in (400, 404)
                and not exc.fatal
                and self._after
            ):
                raise CursorLost(f"cursor answered {exc.status}") from exc
            raise exc
        page = self._page
        assert page is not None
        self._page = None
        if follow and isinstance(page, Page) and page.has_more and page.msgs:
            self.fetch(page.msgs[-1].id, hashed=self.hashed)
        return page

    def adopt(self, hit: Hit) -> Page:
        """Parse a page that came back unparsed after all, and fetch the one after it."""
        page = message_page(self._wire.thread_id)(hit.body)
        taken = Page(page.has_more, self._wire.prepare(page), hit.sha)
        if taken.has_more and taken.msgs:
            self.fetch(taken.msgs[-1].id, hashed=True)
        return taken


class _Helper(Protocol):
    @property
    def pending(self) -> bool: ...


@asynccontextmanager
async def _background(start: Callable[[TaskGroup], H]) -> AsyncIterator[H]:
    """``start(tg)``'s helper, whose pending requests are cancelled when the block ends.

    Its background requests never raise (each hands its error to whoever asks for its answer),
    so anything the task group raises comes from the block itself: it is re-raised as itself,
    not wrapped in an exception group, so callers catch ``TransientError`` and friends as usual.

    The task group is cancelled only when a request is still pending: most walks end with none
    (an idle thread's one page was taken), and anyio words a cancellation's reason with the
    repr of the current task, about 100 us (bench_freshness: 1% of the event loop per pass).
    """
    try:
        async with anyio.create_task_group() as tg:
            helper = start(tg)
            try:
                yield helper
            finally:
                if helper.pending:
                    tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            exc = group.exceptions[0]
            raise exc from exc.__cause__
        raise


def feeding(wire: Wire, order: Order) -> AbstractAsyncContextManager[PageFeed]:
    """A :class:`PageFeed` over ``wire``, its pending request cancelled when the walk is done."""
    return _background(lambda tg: PageFeed(tg, wire, order))


class Refetches:
    """The GETs of messages stored as in progress, sent alongside an ordinary pass's probe.

    Whether such a message is final can only be asked of it alone, and the question does not
    depend on what the probe finds, so an idle thread's two requests overlap instead of following
    one another. The walk still decides which answers it uses: a message it listed itself meanwhile
    needs none (its answer is dropped), exactly the GETs of the sequential order are acted on.
    """

    AHEAD = 4  # at most this many per pass in flight early; any more are fetched when needed

    def __init__(self, tg: TaskGroup | None, wire: Wire, ids: list[str]) -> None:
        self._wire = wire
        self._answers: dict[str, tuple[anyio.Event, list[Any]]] = {}
        self._sent: list[anyio.Event] = []  # each early request's end, taken or not
        if tg is None:  # none early: each asked when needed
            return
        for message_id in ids[: self.AHEAD]:
            done, answer = self._answers[message_id] = (anyio.Event(), [])
            self._sent.append(done)
            tg.start_soon(self._run, message_id, done, answer)

    @property
    def pending(self) -> bool:
        """Whether an early request is still in flight."""
        return not all(done.is_set() for done in self._sent)

    async def _run(self, message_id: str, done: anyio.Event, answer: list[Any]) -> None:
        try:
            answer.append(await self._wire.get(message_id))
        except Exception as exc:  # handed to the walk when (if) it asks for this message
            answer.append(exc)
        finally:
            done.set()

    async def get(self, message_id: str) -> dict[str, Any]:
        """The message's answer: the early one if it was sent, else a GET now."""
        early = self._answers.pop(message_id, None)
        if early is None:
            return await self._wire.get(message_id)
        done, answer = early
        await done.wait()
        if isinstance(answer[0], Exception):
            raise answer[0]
        return cast(dict[str, Any], answer[0])


def refetching(wire: Wire, ids: list[str]) -> AbstractAsyncContextManager[Refetches]:
    """:class:`Refetches` for ``ids``, its unused requests cancelled when the block ends.

    With no ids (almost every ordinary pass) there is nothing to send early, so no task group:
    entering and leaving one cost each pass two cancel scopes and a checkpoint, an extra turn of
    the event loop through the whole pass's stack (bench_freshness: ~2% of the loop's profile).
    """
    if not ids:
        return nullcontext(Refetches(None, wire, []))
    return _background(lambda tg: Refetches(tg, wire, ids))
