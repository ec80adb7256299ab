"""One thread's pass: the first sync, ordinary passes, full reconciles, and recovery.

The wire gives no ``updated_at`` and says nothing about a cursor that names a deleted message, so
every walk checks what it is told:

- **first sync** walks newest-first (recent conversation lands first) and records its cursor with
  every page, so an interrupted first sync resumes where it stopped;
- **ordinary pass** asks for the single newest message; when that is the high-water mark the thread
  is idle (one small request). Otherwise it walks forward from the high-water mark and checks that
  the first page really starts after it. A cursor the server rejects (404, 400), ignores (the walk
  restarts at the head) or answers with an empty page although a newer message exists, is a cursor
  that names a deleted message: the pass rescans the thread;
- **full pass** (reconcile, and the rescan) walks the whole thread oldest-first, applies changed
  content and metadata, tombstones what the server no longer lists and restores what reappears. It
  compares the listing with the mirror one ``created_at`` window at a time, so memory stays flat.
  A walk that finds nothing to write leaves a memo that lets the next one, if the mirror and
  every page are byte for byte the same, skip parsing (``memo.py``).

Each page's rows and the cursor advance commit in one transaction: killed at any instant, a rerun
loses nothing and duplicates nothing.
"""

from __future__ import annotations

import sqlite3
import time
import traceback
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple, TypeVar, cast

import anyio
from anyio.abc import TaskGroup
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlmodel import Session, col

from worker.client import ApiClient, MessagePage
from worker.client.models import Listed, message_page
from worker.daemon.fence import Fence, LeaseLost
from worker.errors import (
    ApiError,
    AuthError,
    NotFoundError,
    PagingError,
    ParkedError,
    PermanentError,
    ThreadsyncError,
    TransientError,
)
from worker.jsontext import column_text
from worker.logs import get_logger, redact_message
from worker.store.db import Mirror, translate_store_error
from worker.store.models import Message, SyncState, utcnow
from worker.store.repo import get_meta, set_meta, state_of
from worker.sync.apply import (
    Census,
    Counts,
    Direction,
    Incoming,
    Plan,
    advance_cursor,
    close_state,
    insert_new,
    load_census,
    load_stored,
    plan_new,
    plan_page,
    prepare,
    settle,
    tombstone,
    unlisted,
    write_plan,
)
from worker.sync.memo import CensusAhead, MemoRecorder, WalkMemo
from worker.sync.order import Place, TieOrder, first_tie_pair

log = get_logger()
H = TypeVar("H")  # a background helper's type (see _background)

TIE_ORDER_KEY = "server.tie_order"
MAX_RESTARTS = 3
STABLE_PROBE_LIMIT = 20  # the idle probe's size unless the server is known to reverse ties


class _MemoMissed(Exception):
    """A page after the first differs from the walk memo's (see ``worker/sync/memo.py``)."""

    def __init__(self, page: int) -> None:
        super().__init__(f"page {page}")
        self.page = page


class _Keep:
    """What a pass that leaves ``walk_memo`` as it is writes there (nothing)."""


_KEEP = _Keep()


class _CursorLost(Exception):
    """The message a cursor names is gone (or the server stopped honouring the cursor)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Hit(NamedTuple):
    """A page whose body was the one expected (a walk memo's), left unparsed."""

    body: bytes
    sha: bytes


class _Page(NamedTuple):
    has_more: bool
    msgs: list[Incoming]
    sha: bytes | None  # the body's SHA-256 where it was asked for (full walks)


class _Ahead:
    """Fetches a walk's next page while the current one is being stored.

    A walk's next cursor is known as soon as a page is parsed, so the request for page k+1 runs
    while page k's transaction commits in a worker thread: the wire and the database overlap
    instead of adding up.
    """

    def __init__(self, tg: TaskGroup, walk: ThreadPass, order: Literal["asc", "desc"]) -> None:
        self._tg = tg
        self._walk = walk
        self._order = order
        self._done = anyio.Event()
        self._page: _Page | _Hit | None = None
        self._error: Exception | None = None
        self._after: str | None = None
        self.hashed = False  # whether the pages fetched next are hashed (see fetch)

    def fetch(
        self, after: str | None, *, hashed: bool = False, unless: bytes | None = None
    ) -> None:
        """Request the page after ``after``; ``hashed``: with its body's SHA-256 (and this page
        and the following ones), and left unparsed if that is ``unless``."""
        self._done = anyio.Event()
        self._page, self._error, self._after = None, None, after
        self.hashed = hashed or unless is not None
        self._tg.start_soon(self._run, after, self.hashed, unless)

    async def _run(self, after: str | None, hashed: bool, unless: bytes | None) -> None:
        try:
            if hashed:
                listed = await self._walk._list_unless(
                    order=self._order, after=after, unless=unless
                )
                if listed.page is None:
                    assert listed.body is not None
                    self._page = _Hit(listed.body, listed.sha)
                    return
                page, sha = listed.page, listed.sha
            else:
                page, sha = await self._walk._list(order=self._order, after=after), None
            # Prepared at once: a waiting page is kept as its messages' text and columns, not as
            # parsed objects (several times the size, and eight passes each keep one waiting).
            self._page = _Page(page.has_more, self._walk._prepare(page), sha)
        except Exception as exc:  # handed to the walk, which decides what it means
            self._error = exc
        finally:
            self._done.set()

    async def take(self) -> tuple[bool, list[Incoming]]:
        """The fetched page's ``has_more`` and messages; starts fetching the next page if any.

        A request with a cursor that the server refuses as a cursor raises :class:`_CursorLost`.
        """
        page = await self.take_page()
        assert isinstance(page, _Page)
        return page.has_more, page.msgs

    async def take_page(self, *, follow: bool = True) -> _Page | _Hit:
        """As :meth:`take`; a :class:`_Hit` is returned as it is, and fetches nothing next
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
                raise _CursorLost(f"cursor answered {exc.status}") from exc
            raise exc
        page = self._page
        assert page is not None
        self._page = None
        if follow and isinstance(page, _Page) and page.has_more and page.msgs:
            self.fetch(page.msgs[-1].id, hashed=self.hashed)
        return page

    def adopt(self, hit: _Hit) -> _Page:
        """Parse a page that came back unparsed after all, and fetch the one after it."""
        page = message_page(self._walk.thread_id)(hit.body)
        taken = _Page(page.has_more, self._walk._prepare(page), hit.sha)
        if taken.has_more and taken.msgs:
            self.fetch(taken.msgs[-1].id, hashed=True)
        return taken


@asynccontextmanager
async def _background(start: Callable[[TaskGroup], H]) -> AsyncIterator[H]:
    """``start(tg)``'s helper, whose pending requests are cancelled when the block ends.

    Its background requests never raise (each hands its error to whoever asks for its answer),
    so anything the task group raises comes from the block itself: it is re-raised as itself,
    not wrapped in an exception group, so callers catch ``TransientError`` and friends as usual.
    """
    try:
        async with anyio.create_task_group() as tg:
            try:
                yield start(tg)
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            exc = group.exceptions[0]
            raise exc from exc.__cause__
        raise


def _prefetching(
    walk: ThreadPass, order: Literal["asc", "desc"]
) -> AbstractAsyncContextManager[_Ahead]:
    """An :class:`_Ahead` for ``walk``, its pending request cancelled when the walk is done."""
    return _background(lambda tg: _Ahead(tg, walk, order))


class _Refetches:
    """The GETs of messages stored as in progress, sent alongside an ordinary pass's probe.

    Whether such a message is final can only be asked of it alone, and the question does not
    depend on what the probe finds, so an idle thread's two requests overlap instead of following
    one another. The walk still decides which answers it uses: a message it listed itself meanwhile
    needs none (its answer is dropped), exactly the GETs of the sequential order are acted on.
    """

    AHEAD = 4  # at most this many per pass in flight early; any more are fetched when needed

    def __init__(self, tg: TaskGroup, walk: ThreadPass, ids: list[str]) -> None:
        self._walk = walk
        self._answers: dict[str, tuple[anyio.Event, list[Any]]] = {}
        for message_id in ids[: self.AHEAD]:
            done, answer = self._answers[message_id] = (anyio.Event(), [])
            tg.start_soon(self._run, message_id, done, answer)

    async def _run(self, message_id: str, done: anyio.Event, answer: list[Any]) -> None:
        try:
            answer.append(await self._walk._get(message_id))
        except Exception as exc:  # handed to the walk when (if) it asks for this message
            answer.append(exc)
        finally:
            done.set()

    async def get(self, message_id: str) -> dict[str, Any]:
        """The message's answer: the early one if it was sent, else a GET now."""
        early = self._answers.pop(message_id, None)
        if early is None:
            return await self._walk._get(message_id)
        done, answer = early
        await done.wait()
        if isinstance(answer[0], Exception):
            raise answer[0]
        return cast(dict[str, Any], answer[0])


def _refetching(walk: ThreadPass, ids: list[str]) -> AbstractAsyncContextManager[_Refetches]:
    """:class:`_Refetches` for ``ids``, its unused requests cancelled when the block ends."""
    return _background(lambda tg: _Refetches(tg, walk, ids))


class TieConvention:
    """The server's order of equal-``created_at`` messages in descending listings, learned once.

    Shared by every thread of a run; persisted in the mirror so later runs need no probe.
    """

    def __init__(self, mirror: Mirror) -> None:
        self._mirror = mirror
        self._lock = anyio.Lock()
        self.value: TieOrder | None = None

    async def load(self) -> None:
        def read() -> str | None:
            with self._mirror.read() as session:
                return get_meta(session, TIE_ORDER_KEY)

        stored = await self._mirror.run(read)
        if stored in ("reverse", "stable"):
            self.value = stored  # type: ignore[assignment]

    async def learn(self, client: ApiClient, thread_id: str, pair: tuple[str, str]) -> int:
        """``pair`` were neighbours in a descending listing, in one second: which came first?

        The message listed right after ``pair[1]`` in ascending order is ``pair[0]`` exactly when
        descending order is the reverse of ascending order. Returns how many requests it made.
        """
        async with self._lock:
            if self.value is not None:
                return 0
            # Without the answer a page's ties cannot be ranked, and a guess would be stored as
            # fact: a failed probe fails this pass of the thread, which resumes on the next.
            try:
                page = await client.list_messages(thread_id, limit=2, order="asc", after=pair[1])
                # A server whose cursor is inclusive lists pair[1] itself first: skipped.
                following = [m for m in page.data if m["id"] != pair[1]]
                if following:
                    learned: TieOrder = "reverse" if following[0]["id"] == pair[0] else "stable"
                else:
                    # Nothing follows pair[1] ascending: it is the newest message, so ties keep
                    # creation order in descending listings too (unless it was just deleted).
                    await client.get_message(thread_id, pair[1])
                    learned = "stable"
            except (ParkedError, AuthError):
                raise
            except ApiError as exc:
                if exc.fatal:
                    raise
                log.info("sync.tie_probe_failed", thread=thread_id, status=exc.status)
                raise TransientError(
                    f"thread {thread_id}: could not learn how the server orders messages of one"
                    f" second ({exc}); nothing of this page was stored, the next pass retries"
                ) from exc
            self.value = learned

            def write() -> None:
                with self._mirror.write() as session:
                    set_meta(session, TIE_ORDER_KEY, learned)

            await self._mirror.run_write(write)
            log.info("sync.tie_order_learned", thread=thread_id, tie_order=learned)
            return 1 if following else 2

    @property
    def effective(self) -> TieOrder:
        return self.value or "reverse"


@dataclass(slots=True)
class Cursor:
    """What a walk moves with each page it stores (the rest of the state changes at the end).

    The pass keeps its own copy: it is the only writer of its thread's state while it runs (a
    thread is in one run at a time), so a page's advance is one UPDATE of the columns that moved,
    computed here, with no read of the row first.
    """

    initial_done: bool
    initial_after: str | None
    high_water_id: str | None
    last_full_at: datetime | None

    @classmethod
    def of(cls, state: SyncState) -> Cursor:
        return cls(state.initial_done, state.initial_after, state.high_water_id, state.last_full_at)

    def moved(self, advance: Callable[[Cursor], None]) -> tuple[Cursor, dict[str, Any]]:
        """The cursor after ``advance``, and the columns that changed."""
        after = replace(self)
        advance(after)
        changed = {
            name: value
            for name in ("initial_done", "initial_after", "high_water_id", "last_full_at")
            if (value := getattr(after, name)) != getattr(self, name)
        }
        return after, changed


class Known(NamedTuple):
    """A thread's sync state (None before its first pass) and its messages stored in progress."""

    state: SyncState | None
    busy: set[str]


@dataclass
class ThreadOutcome:
    """What one pass over one thread did.

    ``result``: synced | gone | parked | failed | skipped, or, until the run decides (see
    ``worker/sync/runner.py``), ``missing`` (a 404: gone, a failure, or a sign of a wrong
    configuration, depending on what the rest of the run saw) and ``stopped`` (an answer that
    stops the whole run: a wrong key, no connection, a path or api-version the service rejects).
    """

    thread_id: str
    result: str
    counts: Counts = field(default_factory=Counts)
    requests: int = 0
    error: str | None = None
    rescans: int = 0
    seconds: float = 0.0
    cause: str | None = None  # what failed, without the thread's details: summaries group by it
    answered: bool = False  # the service answered at least one of this pass's requests with 2xx
    not_found: NotFoundError | None = None  # the 404 of a ``missing`` outcome
    fatal: ApiError | None = None  # the answer of a ``stopped`` outcome
    synced_before: bool = False  # the thread had synced before this pass (a 404 may mean gone)
    was_gone: bool = False  # a re-check of a thread marked gone

    @property
    def ok(self) -> bool:
        return self.result in {"synced", "skipped"}


class ThreadPass:
    """One pass over one thread; create a new one for every pass."""

    def __init__(
        self,
        client: ApiClient,
        mirror: Mirror,
        thread_id: str,
        *,
        ties: TieConvention,
        page_limit: int = 100,
        now: Callable[[], datetime] = utcnow,
        known: Known | None = None,
        censuses: CensusAhead | None = None,
        fence: Fence | None = None,
    ) -> None:
        self.client = client
        self.fence = fence  # replicas: every write checks the lease (worker/daemon/fence.py)
        self.mirror = mirror
        self.thread_id = thread_id
        self.ties = ties
        self.limit = page_limit
        self.now = now
        self.outcome = ThreadOutcome(thread_id, "synced")
        self._parked: float | None = None
        self._fresh: set[str] = set()  # in-progress messages this pass listed itself
        # Stored as in progress when the pass began (read with the state), less those this pass
        # has since seen final or gone: what is left is re-fetched at the end.
        self._busy: set[str] = set()
        self._known = known  # read by the run for this pass: spares the pass its first read
        self._cursor = Cursor(False, None, None, None)  # set from the state when the pass begins
        # Cursor columns moved by a page that wrote nothing else: written with the closing state.
        self._late: dict[str, Any] = {}
        self._memo: WalkMemo | None = None  # the state's walk memo (see worker/sync/memo.py)
        self._memo_out: str | _Keep | None = _KEEP  # what the closing state writes there
        self._page_writes = 0  # write transactions of pages (a full walk's memo needs none)
        self._censuses = censuses

    # -- entry point ---------------------------------------------------------------------------

    async def run(self, *, full: bool = False) -> ThreadOutcome:
        """Pass over the thread; every failure becomes this thread's recorded outcome."""
        started = time.monotonic()
        try:
            await self._run(full)
        except LeaseLost as exc:  # another replica has the thread now: it writes, not us
            self._fail("lost", exc)
        except Exception as exc:
            # Not one of the failures the walks expect (a write the database refused, a bug):
            # still this thread's failure alone, recorded and shown by `status`; the other
            # threads of the run go on.
            self._fail("failed", exc, detail=unexpected(exc))
            log.warning(
                "sync.thread_error",
                thread=self.thread_id,
                error=unexpected(exc),
                where=_raised_at(exc),  # no traceback: its message may quote message content
            )
        self.outcome.seconds = time.monotonic() - started
        self._finish()
        return self.outcome

    async def _run(self, full: bool) -> None:
        state = await self._state()
        try:
            if state.initial_done and not full:
                # The probe and the GETs of messages stored in progress go out together.
                async with _refetching(self, self._to_refetch()) as early:
                    await self._ordinary(state)
                    await self._refetch_in_progress(early)
            else:
                if state.initial_done:
                    await self._full_walk("reconcile")
                else:
                    resumed = state.initial_after is not None
                    await self._first_sync(state)
                    if full:
                        await self._full_walk("reconcile")
                    elif resumed:
                        # Messages posted since the interrupted pass began are newer than the
                        # high-water mark that pass recorded: look for them now, not next pass.
                        await self._ordinary(await self._state())
                await self._refetch_in_progress(None)
        except ParkedError as exc:
            self._fail("parked", exc, parked=exc.retry_after)
        except NotFoundError as exc:
            self._not_found(state, exc)
        except (AuthError, PermanentError, TransientError) as exc:
            if exc.fatal:
                self._stop(exc)
            else:
                self._fail("failed", exc)
        except PagingError as exc:
            self._fail("failed", exc)

    # -- the three walks -----------------------------------------------------------------------

    async def _first_sync(self, state: SyncState) -> None:
        """Newest-first, resumable from ``initial_after``; ends by marking the first sync done."""
        after = state.initial_after
        prev = await self._place(after) if after else None
        prev_id = after
        # The cursor's own message counts as listed: a page that starts with it again (a server
        # whose cursor is inclusive) has not lost the cursor.
        previous_ids: set[str] = {after} if after else set()
        high_water = state.high_water_id
        # A first sync from the start walks the whole thread: it may leave a walk memo (proven
        # once it is done) that spares the next reconcile parsing it all again.
        record = MemoRecorder("desc") if after is None else None
        async with _prefetching(self, "desc") as ahead:
            ahead.fetch(after, hashed=record is not None)
            while True:
                try:
                    taken = await ahead.take_page()
                except _CursorLost as lost:
                    reason = f"first-sync {lost.reason}"
                    break
                assert isinstance(taken, _Page)  # nothing was fetched ``unless``
                has_more, msgs = taken.has_more, taken.msgs
                fresh = _past_relisted(self.thread_id, msgs, previous_ids)
                if (
                    after is not None
                    and msgs
                    and not (fresh and _advances_desc(prev, previous_ids, fresh, high_water))
                ):
                    reason = "first-sync cursor ignored by the server"
                    break
                if not msgs and after is not None:
                    if record is not None:
                        record.spoilt = True  # a replay could not ask the question below again
                    if not await self._exists(after):
                        reason = "first-sync cursor names a deleted message"
                        break
                await self._learn_ties(prev, prev_id, fresh)  # neighbours, not a re-listing
                done = not has_more or not msgs
                if high_water is None and msgs:
                    high_water = msgs[0].id

                def advance(st: Cursor, msgs: list[Incoming] = msgs, done: bool = done) -> None:
                    if msgs:
                        st.initial_after = msgs[-1].id
                        if st.high_water_id is None:
                            st.high_water_id = msgs[0].id
                    if done:
                        st.initial_done, st.initial_after = True, None

                prev = await self._store(msgs, "desc", prev, advance, new=True)
                if record is not None:
                    assert taken.sha is not None
                    record.page(taken.sha, msgs, has_more)
                    if record.listed is None:  # above the census limit: no memo to prove
                        record = None
                        ahead.hashed = False
                if done:
                    if record is not None and not record.spoilt:
                        found = record.first_sync(
                            self.limit, self.ties.value, sqlite=self.mirror.is_sqlite
                        )
                        self._memo_out = None if found is None else found.dumps()
                    return
                previous_ids = {m.id for m in msgs}
                after = prev_id = msgs[-1].id
        await self._full_walk(reason)

    async def _ordinary(self, state: SyncState) -> None:
        """One small request when idle; otherwise forward from the high-water mark, checked."""
        # Where the server's descending listing keeps creation order within a second ("stable"),
        # its first item is the *oldest* message of the newest second, so the probe must see the
        # whole newest second to know the newest message; where it reverses it, one item does.
        limit = 1 if self.ties.value == "reverse" else STABLE_PROBE_LIMIT
        probe = await self._list(order="desc", limit=limit)
        listed = self._prepare(probe)
        high_water = state.high_water_id
        if not listed:
            if high_water is not None and await self._has_live_messages():
                await self._full_walk("the server lists no messages any more")
            return
        await self._learn_ties(None, None, listed)
        top = _newest_listed(listed, probe.has_more, self.ties.value)
        if top is not None and top.id == high_water:
            return
        hw_place = await self._place(high_water) if high_water else None
        if hw_place is None:
            await self._full_walk("no usable high-water mark")
            return
        if top is None:  # the newest second fills the probe: only the forward walk can tell
            try:
                await self._forward(high_water, hw_place, may_be_idle=True)  # type: ignore[arg-type]
            except _CursorLost as lost:
                await self._full_walk(lost.reason)
            return
        top_place = await self._place(top.id)
        if top_place is not None and (top.created_at, top_place.rank) < (
            hw_place.created_at,
            hw_place.rank,
        ):
            # The high-water message was deleted and nothing newer exists: step the cursor back.
            await self._store([], "asc", None, lambda st: setattr(st, "high_water_id", top.id))
            log.info("sync.cursor_stepped_back", thread=self.thread_id, cursor=top.id)
            return
        try:
            await self._forward(high_water, hw_place)  # type: ignore[arg-type]
        except _CursorLost as lost:
            await self._full_walk(lost.reason)

    async def _forward(self, after: str, prev: Place, *, may_be_idle: bool = False) -> None:
        """Oldest-first from the high-water mark ``after``, checking the server honours it.

        ``may_be_idle``: nothing newer may exist, so an empty first page is idle when the
        cursor's message still exists (one GET tells), and a lost cursor when it does not.
        """
        first = True
        previous_ids = {after}  # as in _first_sync: the cursor's message listed again is no loss
        async with _prefetching(self, "asc") as ahead:
            ahead.fetch(after)
            while True:
                has_more, msgs = await ahead.take()
                if first and not msgs:
                    if may_be_idle and await self._exists(after):
                        return
                    raise _CursorLost("empty page after the cursor although newer messages exist")
                fresh = _past_relisted(self.thread_id, msgs, previous_ids)
                if msgs and not (
                    fresh and await self._advances_asc(prev, previous_ids, fresh[0], first)
                ):
                    raise _CursorLost("the server ignored the cursor")
                first = False

                def advance(st: Cursor, msgs: list[Incoming] = msgs) -> None:
                    if msgs:
                        st.high_water_id = msgs[-1].id

                prev = await self._store(msgs, "asc", prev, advance, new=True) or prev
                if not has_more or not msgs:
                    return
                previous_ids = {m.id for m in msgs}

    async def _full_walk(self, reason: str) -> None:
        """Oldest-first over the whole thread with tombstones; restart if the cursor is lost."""
        self.outcome.rescans += 1
        log.info("sync.rescan", thread=self.thread_id, reason=reason)
        memo, restarts = self._memo, 0
        while True:
            try:
                await self._full_walk_once(memo)
            except _CursorLost as lost:
                log.info("sync.rescan_restart", thread=self.thread_id, reason=lost.reason)
                restarts += 1
                if restarts >= MAX_RESTARTS:
                    raise TransientError(
                        f"thread {self.thread_id}: the server kept losing the cursor during a"
                        " full walk; will retry on a later pass"
                    ) from None
            except _MemoMissed as missed:
                # Not a fault: the thread changed since the memo; walk it the ordinary way.
                log.debug("sync.walk_memo_missed", thread=self.thread_id, page=missed.page)
            else:
                return
            memo = None

    async def _full_walk_once(self, memo: WalkMemo | None) -> None:
        after: str | None = None
        prev: Place | None = None
        low: int | None = None
        # Ids listed in the open window [low, ...), with their second: a window only closes at a
        # second the walk has fully passed, so a tie group spanning pages is compared whole.
        seen: dict[str, int] = {}
        previous_ids: set[str] = set()
        record = MemoRecorder()
        wrote = False  # a page of this walk was written: its memo needs proving (_prove)
        ties = self.ties.effective
        key = (self.limit, ties)
        # Replayed only if nothing stored in progress is missing from what the memo listed so:
        # the ordinary walk would then leave the set to re-fetch as the replay does.
        replay = memo if memo is not None and self._busy <= memo.fresh else None
        census: Census | None = None
        checked = False
        if replay is not None and replay.order == "desc":
            # Whether to list newest-first depends on the census: known before the first page.
            census, replay = await self._census_for(replay, key)
            checked = True
        async with _prefetching(self, replay.order if replay else "asc") as ahead:
            # The first page is on its way while the census is read.
            ahead.fetch(None, hashed=True, unless=replay.pages[0].sha if replay else None)
            if not checked:
                census, replay = await self._census_for(replay, key)
            index = 0  # of the page taken next
            while True:
                # A page the replay cannot use ends the walk: nothing is fetched after it.
                usable = replay is None or (replay.order == "asc" and index == 0)
                taken = await ahead.take_page(follow=usable)
                if isinstance(taken, _Hit):
                    if replay is not None:
                        page = replay.pages[index]
                        index += 1
                        if index == len(replay.pages):
                            self._replayed(replay)
                            return
                        ahead.fetch(page.next, unless=replay.pages[index].sha)
                        continue
                    assert not checked  # listed newest-first only for a census that fits
                    taken = ahead.adopt(taken)  # the census differs: compare it after all
                elif replay is not None and (index > 0 or replay.order == "desc"):
                    # The pages before it were not compared, or this one is not in walk order.
                    raise _MemoMissed(index)
                if replay is not None and census is None:
                    census = await self._census()  # the first page differs: compare it
                replay = None
                has_more, msgs = taken.has_more, taken.msgs
                fresh = _past_relisted(self.thread_id, msgs, previous_ids)
                if (
                    after is not None
                    and msgs
                    and (
                        not fresh
                        or fresh[0].id in seen
                        or (prev is not None and fresh[0].created_at < prev.created_at)
                    )
                ):
                    raise _CursorLost("the server ignored the cursor")
                if after is not None and not msgs:
                    record.spoilt = True  # the memo could not ask the question below again
                    if not await self._exists(after):
                        raise _CursorLost("empty page after a cursor that names a deleted message")
                done = not has_more or not msgs
                high = None if done else msgs[-1].created_at
                seen.update((m.id, m.created_at) for m in msgs)
                window = (low, high, frozenset(seen))
                assert taken.sha is not None
                record.page(taken.sha, msgs, has_more)

                def advance(st: Cursor, msgs: list[Incoming] = msgs, done: bool = done) -> None:
                    if msgs:
                        st.high_water_id = msgs[-1].id
                    if done:
                        st.initial_done, st.initial_after = True, None
                        st.last_full_at = self.now()

                # A page that changes nothing writes nothing (not even the cursor: a full
                # walk always starts from the beginning); the last page records the end, with
                # the pass's closing state if it changes nothing either (known from the census).
                writes = self._page_writes
                prev = (
                    await self._store(
                        msgs,
                        "asc",
                        prev,
                        advance,
                        sweep=window,
                        only_if_changed=not done or census is not None,
                        late=done,
                        census=census,
                    )
                    or prev
                )
                wrote |= self._page_writes != writes
                if done:
                    if census is None:
                        self._memo_out = None
                    elif wrote:
                        await self._prove(record)
                    else:
                        found = record.memo(census.sig, *key)
                        self._memo_out = None if found is None else found.dumps()
                    return
                seen = {mid: at for mid, at in seen.items() if high is not None and at >= high}
                low = high
                previous_ids = {m.id for m in msgs}
                after = msgs[-1].id

    async def _census_for(
        self, memo: WalkMemo | None, key: tuple[int, TieOrder]
    ) -> tuple[Census | None, WalkMemo | None]:
        """The census a full walk compares with (None: above the limit, or not needed), and
        ``memo`` if it fits that census."""
        # The signature the run read ahead describes the state this pass began from: it serves
        # no walk after this pass has written a page.
        early = await self._censuses.take(self.thread_id) if self._censuses else False
        if self._page_writes:
            early = False
        if early is not False and early is not None and memo and memo.fits(early, *key):
            return None, memo  # read only if a page differs after all
        # Read here, unless the read ahead found the thread above the census limit.
        census = None if early is None else await self._census()
        if census is None or (memo and not memo.fits(census.sig, *key)):
            memo = None
        return census, memo

    async def _prove(self, record: MemoRecorder) -> None:
        """Record the memo of a full walk that wrote, if the mirror it left (read again once
        its writes are committed) proves it."""
        if record.spoilt:
            self._memo_out = None
            return
        try:
            census = await self._census()
        except (SQLAlchemyError, sqlite3.Error) as exc:  # the walk is done: only its memo is lost
            log.warning("sync.walk_memo_unproven", thread=self.thread_id, error=type(exc).__name__)
            census = None
        found = record.proven(census, self.limit, self.ties.effective)
        self._memo_out = None if found is None else found.dumps()
        if found is not None:
            log.debug("sync.walk_memo_proven", thread=self.thread_id, order=found.order)

    def _replayed(self, memo: WalkMemo) -> None:
        """The end of a walk its memo replayed: as the walk it replays ended (see ``_store``)."""
        last = memo.end

        def advance(st: Cursor) -> None:
            if last is not None:
                st.high_water_id = last
            st.initial_done, st.initial_after = True, None
            st.last_full_at = self.now()

        self._cursor, ended = self._cursor.moved(advance)
        self._late.update(ended)
        self._fresh.update(memo.fresh)
        self._memo_out = _KEEP

    def _to_refetch(self) -> list[str]:
        """Stored as in progress and not listed by this pass (a listing is current already)."""
        return [m for m in sorted(self._busy) if m not in self._fresh]

    async def _refetch_in_progress(self, early: _Refetches | None) -> None:
        """Messages first seen while still being written: fetch them until they are final."""
        for message_id in self._to_refetch():
            try:
                obj = await (self._get(message_id) if early is None else early.get(message_id))
            except NotFoundError:
                now = self.now()

                def gone(mid: str = message_id, now: datetime = now) -> int:
                    with self.mirror.write() as session:
                        if self.fence is not None:
                            self.fence.guard(session, self.thread_id)
                        return tombstone(session, [mid], now)

                deleted = await self.mirror.run_write(gone)
                self.outcome.counts.deleted += deleted
                continue
            # Most re-fetches find the message still being written, unchanged: no write then.
            await self._store(
                [prepare(obj, self.thread_id)], "asc", None, None, only_if_changed=True
            )

    # -- plumbing ------------------------------------------------------------------------------

    async def _list(
        self, *, order: Literal["asc", "desc"], after: str | None = None, limit: int | None = None
    ) -> MessagePage:
        self._ensure()
        self.outcome.requests += 1
        page = await self.client.list_messages(
            self.thread_id, limit=limit or self.limit, order=order, after=after
        )
        self.outcome.answered = True
        return page

    async def _list_unless(
        self, *, order: Literal["asc", "desc"], after: str | None, unless: bytes | None
    ) -> Listed:
        self._ensure()
        self.outcome.requests += 1
        listed = await self.client.list_messages_unless(
            self.thread_id, unless, limit=self.limit, order=order, after=after
        )
        self.outcome.answered = True
        return listed

    async def _get(self, message_id: str) -> dict[str, Any]:
        self._ensure()
        self.outcome.requests += 1
        message = await self.client.get_message(self.thread_id, message_id)
        self.outcome.answered = True
        return message

    async def _exists(self, message_id: str) -> bool:
        try:
            await self._get(message_id)
        except NotFoundError:
            return False
        return True

    def _ensure(self) -> None:
        """Replicas: no request once the lease is known lost or no longer trusted."""
        if self.fence is not None:
            self.fence.ensure(self.thread_id)

    def _prepare(self, page: MessagePage) -> list[Incoming]:
        return [prepare(obj, self.thread_id) for obj in page.data]

    async def _learn_ties(
        self, prev: Place | None, prev_id: str | None, msgs: list[Incoming]
    ) -> None:
        if self.ties.value is not None:
            return
        pair = first_tie_pair(
            prev.created_at if prev else None, prev_id, [(m.id, m.created_at) for m in msgs]
        )
        if pair is not None:
            # Awaited first: `self.outcome.requests += await ...` would read the count before
            # the wait and overwrite what this pass's prefetch added meanwhile.
            made = await self.ties.learn(self.client, self.thread_id, pair)
            self.outcome.requests += made

    async def _advances_asc(
        self, prev: Place, previous_ids: set[str], first: Incoming, first_page: bool
    ) -> bool:
        if first.id in previous_ids or first.created_at < prev.created_at:
            return False
        if not first_page:
            return True
        stored = await self._place(first.id)
        return stored is None or (first.created_at, stored.rank) > (prev.created_at, prev.rank)

    async def _store(
        self,
        msgs: list[Incoming],
        direction: Direction,
        prev: Place | None,
        advance: Callable[[Cursor], None] | None,
        *,
        sweep: tuple[int | None, int | None, frozenset[str]] | None = None,
        only_if_changed: bool = False,
        new: bool = False,
        late: bool = False,
        census: Census | None = None,
    ) -> Place | None:
        """Apply a page and move the cursor in one transaction.

        ``new``: the page should hold only messages the mirror has not stored (a first sync, a
        forward walk), so it is first tried as one INSERT without reading (see ``insert_new``).

        With ``only_if_changed`` the page is first planned, from the walk's ``census`` when it
        has one or else in a read transaction (which never waits for SQLite's single writer),
        and nothing is written when nothing differs; with ``late``, the cursor's advance then
        goes with the pass's closing state instead of a transaction of its own.
        """
        now = self.now()
        ties = self.ties.effective
        self._fresh.update(m.id for m in msgs if m.status == "in_progress")
        self._busy.difference_update(m.id for m in msgs if m.status != "in_progress")

        def plan(session: Session) -> tuple[Plan, list[str]]:
            stored = load_stored(session, [m.id for m in msgs])
            page_plan = plan_page(stored, msgs, direction=direction, ties=ties, prev=prev)
            settle(session, page_plan)
            gone: list[str] = []
            if sweep is not None:
                low, high, seen = sweep
                gone = unlisted(session, self.thread_id, low=low, high=high, seen=set(seen))
            return page_plan, gone

        if only_if_changed:

            def check() -> tuple[Plan, list[str]]:
                with self.mirror.read() as session:
                    return plan(session)

            if census is not None:
                page_plan = plan_page(
                    census.stored, msgs, direction=direction, ties=ties, prev=prev
                )
                gone = census.unlisted(low=sweep[0], high=sweep[1], seen=sweep[2]) if sweep else []
            else:
                page_plan, gone = await self.mirror.run(check)
            if page_plan.empty and not gone:
                if late and advance is not None:
                    self._cursor, ended = self._cursor.moved(advance)
                    self._late.update(ended)
                return page_plan.last

        cursor, moved = self._cursor, None
        if advance is not None:
            cursor, moved = self._cursor.moved(advance)

        fresh = None
        if new and self.mirror.is_sqlite:  # planned here: the writer's time is the scarce one
            fresh = plan_new(
                self.thread_id, msgs, direction=direction, ties=ties, prev=prev, now=now
            )

        def work(session: Session) -> tuple[Counts, Place | None, list[str]]:
            if self.fence is not None:  # fencing hook 1: the page's write transaction
                self.fence.guard(session, self.thread_id)
            stored = insert_new(session, fresh) if fresh is not None else None
            gone: list[str] = []
            if stored is not None:
                counts, last = stored
            else:
                page_plan, gone = plan(session)
                write_plan(session, self.thread_id, page_plan, now)
                page_plan.counts.deleted += tombstone(session, gone, now)
                counts, last = page_plan.counts, page_plan.last
            if moved is not None:
                advance_cursor(session, self.thread_id, moved)
            return counts, last, gone

        # Grouped: the pages other passes have ready by now share this transaction's commit.
        # On SQLite without a savepoint of its own: if ``work`` fails half-way, what it wrote is
        # rows upserted by id (and tombstones), committed without the cursor advance, which
        # comes last; the next pass lists the page again and converges, duplicating nothing.
        # (PostgreSQL aborts the whole transaction at a failed statement: a savepoint there is
        # what keeps the other pieces.)
        self._page_writes += 1
        counts, last, gone = await self.mirror.write_grouped(
            work, isolated=not self.mirror.is_sqlite, thread_id=self.thread_id
        )
        self._cursor = cursor  # committed
        self._busy.difference_update(gone)
        self.outcome.counts += counts
        return last

    async def _census(self) -> Census | None:
        """The thread's stored messages for a full walk to compare with (None: too many)."""

        def read() -> Census | None:
            with self.mirror.read() as session:
                return load_census(session, self.thread_id)

        return await self.mirror.run(read)

    async def _place(self, message_id: str | None) -> Place | None:
        """Where a stored, live message sits; None if unknown or tombstoned."""
        if message_id is None:
            return None

        def read() -> Place | None:
            with self.mirror.read() as session:
                row = session.execute(
                    select(col(Message.created_at), col(Message.tie_rank)).where(
                        col(Message.id) == message_id, col(Message.deleted_at).is_(None)
                    )
                ).first()
            return None if row is None else Place(row[0], row[1])

        return await self.mirror.run(read)

    async def _has_live_messages(self) -> bool:
        def read() -> bool:
            with self.mirror.read() as session:
                return (
                    session.execute(
                        select(col(Message.id))
                        .where(
                            col(Message.thread_id) == self.thread_id,
                            col(Message.deleted_at).is_(None),
                        )
                        .limit(1)
                    ).first()
                    is not None
                )

        return await self.mirror.run(read)

    async def _state(self) -> SyncState:
        """The thread's sync state, and (same read) the messages stored as in progress."""

        def read() -> Known:
            with self.mirror.read() as session:
                state = session.get(SyncState, self.thread_id)
                if state is None:
                    return Known(None, set())
                busy = select(col(Message.id)).where(
                    col(Message.thread_id) == self.thread_id,
                    col(Message.status) == "in_progress",
                    col(Message.deleted_at).is_(None),
                )
                return Known(state, {row[0] for row in session.execute(busy)})

        known, self._known = self._known, None
        if known is None:
            known = await self.mirror.run(read)
        state, self._busy = known.state, set(known.busy)
        if state is None:

            def create() -> SyncState:
                with self.mirror.write() as session:
                    return state_of(session, self.thread_id)

            state = await self.mirror.run_write(create)
        self._cursor = Cursor.of(state)
        self._memo = WalkMemo.loads(state.walk_memo)
        return state

    def _not_found(self, state: SyncState, exc: NotFoundError) -> None:
        """404 on a request without a cursor: the thread may be gone, or never have existed, or
        the configuration may point somewhere else. One 404 alone cannot tell: the run decides
        (``worker/sync/runner.py``) from what the other threads answered, and writes the state."""
        self.outcome.synced_before = not (
            state.last_success_at is None and state.high_water_id is None
        )
        self._fail("missing", exc)
        self.outcome.not_found = exc

    def _stop(self, exc: ApiError) -> None:
        """An answer no other thread can do better with: the run stops, this pass writes no
        closing state (the thread did not fail: the configuration or the network did)."""
        self._fail("stopped", exc)
        self.outcome.fatal = exc

    def _fail(
        self,
        result: str,
        exc: Exception,
        *,
        parked: float | None = None,
        detail: str | None = None,
    ) -> None:
        self.outcome.result = result
        if not isinstance(exc, ThreadsyncError):
            self.outcome.error = detail  # an unexpected error's own text may quote the data
        else:
            self.outcome.error = describe(exc) if detail is None else f"{detail} ({describe(exc)})"
        self.outcome.cause = cause_of(exc)
        self._parked = parked

    def _finish(self) -> None:
        if self.outcome.result in ("missing", "stopped"):
            return  # the run writes this thread's state once it knows what the 404 meant
        now = self.now()
        outcome = self.outcome
        parked = self._parked

        c = outcome.counts
        sets: dict[str, Any] = {"last_sync_at": now}
        adds = {
            "added": c.added,
            "changed": c.changed,
            "deleted": c.deleted,
            "restored": c.restored,
        }
        if self._late:  # a walk's end that wrote nothing else (see _store)
            adds["pages"] = 1
            sets.update(self._late)
        if not isinstance(self._memo_out, _Keep):
            sets["walk_memo"] = self._memo_out
        if outcome.ok:
            sets.update(
                last_success_at=now,
                consecutive_failures=0,
                last_error=None,
                last_error_kind=None,
                parked_until=None,
            )
        else:
            adds["consecutive_failures"] = 1
            sets.update(
                last_error=column_text(outcome.error),  # may quote an id the server sent
                last_error_kind=outcome.result,
                parked_until=now + timedelta(seconds=parked) if parked else None,
            )
        thread_id = self.thread_id

        fence = self.fence

        # One UPDATE, no read: the pass created the state row when it began (see _state).
        def write(session: Session) -> None:
            # Fencing hook 2, the closing write: a lost lease's pass leaves the state to the new
            # holder (not raised: nobody waits for this piece).
            if fence is None or fence.holds(session, thread_id):
                close_state(session, thread_id, sets, adds)

        # Not waited for: it rides with another pass's next page, or with the run's final flush.
        # One statement, so on SQLite it needs no savepoint: it fails whole or not at all.
        self.mirror.queue_grouped(write, isolated=not self.mirror.is_sqlite, thread_id=thread_id)


def describe(exc: BaseException) -> str:
    """One line for status and summaries: never a credential (the client scrubs its messages).

    An API error's message already says its status once (``GET /threads/...: HTTP 401: ...``).
    """
    if isinstance(exc, ParkedError):
        return f"server asked to wait {exc.retry_after:.0f}s; parked for a later pass"
    if isinstance(exc, ApiError):
        return exc.message
    return redact_message(exc) or type(exc).__name__  # never a SQL parameter or message text


def cause_of(exc: BaseException) -> str:
    """What failed, in words shared by every thread it failed: a run summary groups by it."""
    if isinstance(exc, ParkedError):
        return "parked: the server asked to wait"
    if isinstance(exc, ApiError) and exc.status is not None:
        return f"HTTP {exc.status}" + (
            f" {exc.code}" if exc.code and exc.code != str(exc.status) else ""
        )
    if isinstance(exc, ApiError):
        # The client names a transport failure by its kind: "... no usable answer (ConnectError)".
        _, _, kind = exc.message.partition("no usable answer (")
        return kind.split(")")[0] if kind else "no usable answer"
    return type(exc).__name__


def unexpected(exc: BaseException) -> str:
    """One line for an error no walk expects, naming its kind and never its text: a database
    error's text quotes the statement's parameters, which are message content."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]  # from a task group of the walk: the error itself is the news
    known = translate_store_error(exc)
    if known is not None:  # a full disk, a read-only file: said in words the user can act on
        return str(known)
    if isinstance(exc, DBAPIError):
        kind = type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__
        return (
            f"the mirror database refused this thread's write ({kind}); the next pass retries"
            " the thread"
        )
    return f"unexpected error ({type(exc).__name__}); the next pass retries the thread"


def _raised_at(exc: BaseException) -> str:
    """Where ``exc`` was raised, as ``file:line`` (for a bug report)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


def _newest_listed(msgs: list[Incoming], has_more: bool, ties: TieOrder | None) -> Incoming | None:
    """The newest message in server order among a descending page's first items.

    ``None`` when it cannot be told: under stable ties the newest second fills the whole page and
    continues on the next. With no tie convention learned, no two listed messages share a second.
    """
    if ties != "stable":
        return msgs[0]
    group = [m for m in msgs if m.created_at == msgs[0].created_at]
    if len(group) == len(msgs) and has_more:
        return None
    return group[-1]


def _past_relisted(thread_id: str, msgs: list[Incoming], previous_ids: set[str]) -> list[Incoming]:
    """``msgs`` from the first message the previous page of the walk did not list.

    A page that starts by listing again messages the previous page ended with has still moved
    on: those messages are duplicates across the seam (stored again, the later copy wins), and
    whether the walk advanced is judged from the first new message. Each duplicate is warned
    about once. Empty when the page lists nothing new at all: the server ignored the cursor.
    """
    if not previous_ids or not msgs:
        return msgs
    skip = 0
    while skip < len(msgs) and msgs[skip].id in previous_ids:
        skip += 1
    if skip == len(msgs):
        return []
    for m in msgs:
        if m.id in previous_ids:
            log.warning(
                "sync.duplicate_message", thread=thread_id, message=m.id, kept="the later copy"
            )
    return msgs[skip:]


def _advances_desc(
    prev: Place | None, previous_ids: set[str], msgs: list[Incoming], high_water: str | None
) -> bool:
    first = msgs[0]
    if first.id in previous_ids or first.id == high_water:
        return False
    return prev is None or first.created_at <= prev.created_at
