"""The sync engine against the in-process emulator, on SQLite and PostgreSQL.

The yardstick throughout: the mirror's export equals the emulator's ground truth (same ids, same
objects, same order, nothing twice).
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import httpx
import orjson
import pytest
from pydantic import SecretStr
from sqlalchemy import event

from worker.client import ApiClient
from worker.config import ApiSettings, RetrySettings
from worker.emulator import Behaviour, Emulator, FaultRule, ManualClock, WireError
from worker.export.source import Selection, iter_rows
from worker.store.db import Mirror
from worker.store.models import SyncState
from worker.store.repo import add_threads
from worker.sync import runner
from worker.sync.census import Census
from worker.sync.runner import sync_threads
from worker.sync.thread_pass import ThreadPass
from worker.sync.ties import STABLE_PROBE_LIMIT
from worker.testing import EmulatorTransport, SleepRecorder, emulated_client

pytestmark = pytest.mark.anyio


def exported(mirror: Mirror, thread_id: str, *, include_deleted: bool = False) -> list[Any]:
    sel = Selection(thread_ids=[thread_id], include_deleted=include_deleted)
    return [orjson.loads(r.raw) for r in iter_rows(mirror, sel)]


def truth(emulator: Emulator, thread_id: str) -> list[Any]:
    return list(emulator.truth()["threads"].get(thread_id, []))


def track(mirror: Mirror, *ids: str) -> None:
    with mirror.write() as session:
        add_threads(session, ids)


def seeded(emulator: Emulator, mirror: Mirror, **seed: Any) -> list[str]:
    """Seed the emulator's threads and track them all in the mirror."""
    ids = emulator.seed(**seed)
    track(mirror, *ids)
    return ids


async def sync(emulator: Emulator, mirror: Mirror, **kwargs: Any) -> Any:
    async with emulated_client(emulator) as client:
        return await sync_threads(client, mirror, **kwargs)


def list_requests(emulator: Emulator) -> int:
    routes = emulator.stats()["routes"]
    return sum(n for route, by in routes.items() if "messages" in route for n in by.values())


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(clock=ManualClock(), seed=7)


@pytest.mark.parametrize("ties", ["reverse", "stable"])
async def test_first_sync_mirrors_the_truth_in_server_order(
    emulator: Emulator, mirror: Mirror, ties: str
) -> None:
    """Newest-first paging still stores every thread in the server's order, ties included."""
    emulator.set_behaviour(ties=ties)
    ids = seeded(emulator, mirror, seed=3, threads=3, messages=250)
    report = await sync(emulator, mirror)
    assert report.ok, report.failed
    for thread_id in ids:
        assert exported(mirror, thread_id) == truth(emulator, thread_id)
    assert report.counts.added == 750


async def test_idle_pass_is_one_request_per_thread_and_writes_nothing(
    emulator: Emulator, mirror: Mirror
) -> None:
    """Nothing new: one small request per thread (plus one GET per in-progress message)."""
    ids = seeded(emulator, mirror, seed=1, threads=4, messages=30)
    await sync(emulator, mirror)
    busy = sum(m["status"] == "in_progress" for t in ids for m in truth(emulator, t))
    emulator.reset_stats()
    report = await sync(emulator, mirror)
    assert report.ok
    assert report.requests == 4 + busy
    assert list_requests(emulator) == 4 + busy
    assert report.counts.writes == 0


async def test_a_run_counts_every_request_it_makes(emulator: Emulator, mirror: Mirror) -> None:
    """The run's request count is the server's, also for passes that waited for the tie probe
    while their next page was being fetched."""
    seeded(emulator, mirror, seed=3, threads=6, messages=250)
    emulator.reset_stats()
    report = await sync(emulator, mirror, concurrency=4)
    assert report.ok
    assert report.requests == list_requests(emulator)


async def test_runs_sharing_a_limiter_take_turns_in_order_within_its_slots(
    emulator: Emulator, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs sharing a limiter (the daemon's lanes): never more passes at once than its
    slots, each run's passes begin in its order, and the run started second begins a pass only
    once the first has none left to begin (a slot given back goes to the same run's next pass)."""
    ids = seeded(emulator, mirror, seed=2, threads=12, messages=3)
    first, second = ids[:6], ids[6:]
    began: list[str] = []
    first_began = anyio.Event()
    running, peak = 0, 0
    original = ThreadPass.run

    async def counted(self: ThreadPass, *, full: bool = False) -> Any:
        nonlocal running, peak
        began.append(self.thread_id)
        first_began.set()
        running += 1
        peak = max(peak, running)
        try:
            await anyio.lowlevel.checkpoint()  # let every waiting pass queue up meanwhile
            return await original(self, full=full)
        finally:
            running -= 1

    monkeypatch.setattr(ThreadPass, "run", counted)
    limiter = anyio.CapacityLimiter(2)
    reports: list[Any] = []
    async with emulated_client(emulator) as client:

        async def run(thread_ids: list[str]) -> None:
            reports.append(
                await sync_threads(client, mirror, thread_ids=thread_ids, limiter=limiter)
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, first)
            await first_began.wait()  # the first run holds the slots before the second queues
            tg.start_soon(run, second)
    assert all(r.ok for r in reports)
    assert peak == 2
    assert began == first + second


async def test_a_run_reads_sync_state_once_not_once_per_thread(
    emulator: Emulator, mirror: Mirror
) -> None:
    """Every thread's state and in-progress set come from one read at the start of the run."""
    ids = seeded(emulator, mirror, seed=1, threads=5, messages=10)
    await sync(emulator, mirror)
    statements: list[str] = []
    event.listen(
        mirror.engine,
        "before_cursor_execute",
        lambda _c, _cur, sql, *_: statements.append(sql),
    )
    report = await sync(emulator, mirror)
    assert report.ok
    state_reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")
                   and "FROM sync_state" in s]  # fmt: skip
    assert len(state_reads) == 1
    with mirror.read() as session:  # and every pass's closing state was still written
        states = [session.get(SyncState, t) for t in ids]
    assert all(st is not None and st.last_success_at is not None for st in states)


async def test_an_idle_run_commits_closing_states_as_it_goes(
    emulator: Emulator, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing states wait for a transaction, but once QUEUED_CLOSINGS of them wait, the run
    commits them: a killed idle run over many threads loses only the last few threads' records."""
    monkeypatch.setattr(runner, "QUEUED_CLOSINGS", 2)
    ids = seeded(emulator, mirror, seed=1, threads=6, messages=3)
    await sync(emulator, mirror)
    writes: list[Any] = []
    grouped = mirror.write_grouped

    async def spy(fn: Any) -> Any:
        writes.append(fn)
        return await grouped(fn)

    monkeypatch.setattr(mirror, "write_grouped", spy)
    waiting: list[int] = []
    report = await sync(
        emulator,
        mirror,
        concurrency=1,
        on_thread_done=lambda _: waiting.append(mirror.grouped_waiting),
    )
    assert report.ok
    assert report.counts.writes == 0  # idle: nothing but closing states to write
    assert runner._nothing in writes  # so the run wrote them before its end
    assert waiting[1] == 2  # the second thread's closing state made two waiting
    assert mirror.grouped_waiting == 0
    with mirror.read() as session:
        assert all(session.get(SyncState, t).pages == 1 for t in ids)  # type: ignore[union-attr]


async def test_committing_closing_states_holds_no_pass_slot(
    emulator: Emulator, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit of queued closing states runs beside the passes: with one slot, the next pass
    begins while it is under way (held here until that pass has begun), instead of the slot
    waiting on the commit."""
    monkeypatch.setattr(runner, "QUEUED_CLOSINGS", 1)
    ids = seeded(emulator, mirror, seed=2, threads=3, messages=2)
    await sync(emulator, mirror)
    began = anyio.Event()
    grouped = mirror.write_grouped
    overlapped: list[bool] = []

    async def commit_after_the_next_pass_began(fn: Any) -> Any:
        if fn is runner._nothing and not overlapped:
            with anyio.move_on_after(5):  # only ends a hang: the assertion below fails then
                await began.wait()
            overlapped.append(began.is_set())
        return await grouped(fn)

    monkeypatch.setattr(mirror, "write_grouped", commit_after_the_next_pass_began)
    done: list[str] = []

    def on_done(outcome: Any) -> None:
        done.append(outcome.thread_id)
        if len(done) == 2:
            began.set()  # the second pass ran while the first's commit was held

    report = await sync(emulator, mirror, concurrency=1, on_thread_done=on_done)
    assert report.ok
    assert overlapped == [True]
    assert sorted(done) == sorted(ids)
    assert mirror.grouped_waiting == 0


class _GetBeforeListing(httpx.AsyncBaseTransport):
    """Holds every listing until a GET of one message has been sent, once armed: a pass that
    sent its GETs only after its probe would never see its probe answered."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.armed = False
        self.get_sent = anyio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET" and "/messages/" in path:
            self.get_sent.set()
        elif self.armed and request.method == "GET" and path.endswith("/messages"):
            with anyio.fail_after(10):
                await self.get_sent.wait()
        return await self.inner.handle_async_request(request)


async def test_an_idle_threads_in_progress_get_goes_out_with_its_probe(
    emulator: Emulator, mirror: Mirror
) -> None:
    """The GET of a message stored in progress does not wait for the probe's answer."""
    (thread_id,) = emulator.seed(seed=9, threads=1, messages=5)
    emulator.advance_clock(2)
    emulator.append_messages(
        thread_id,
        messages=[{"role": "assistant", "content": "partial", "status": "in_progress"}],
    )
    track(mirror, thread_id)
    transport = _GetBeforeListing(EmulatorTransport(emulator))
    api = ApiSettings(endpoint="http://127.0.0.1:1", api_key=SecretStr(emulator.api_key))
    async with ApiClient(api, RetrySettings(), transport=transport, sleep=SleepRecorder()) as c:
        assert (await sync_threads(c, mirror)).ok
        transport.armed = True
        report = await sync_threads(c, mirror)
    assert report.ok, report.failed
    busy = [m for m in truth(emulator, thread_id) if m["status"] == "in_progress"]
    assert report.requests == 1 + len(busy)
    assert exported(mirror, thread_id) == truth(emulator, thread_id)


@pytest.mark.parametrize("ties", ["reverse", "stable"])
async def test_new_messages_in_the_same_second_land_in_order(
    emulator: Emulator, mirror: Mirror, ties: str
) -> None:
    """Messages appended later, some in the high-water message's own second, keep server order."""
    emulator.set_behaviour(ties=ties)
    (thread_id,) = emulator.seed(seed=2, threads=1, messages=40)
    track(mirror, thread_id)
    await sync(emulator, mirror)
    emulator.append_messages(thread_id, n=3)
    emulator.advance_clock(1)
    emulator.append_messages(thread_id, n=150)
    report = await sync(emulator, mirror)
    assert report.ok
    assert report.counts.added == 153
    assert exported(mirror, thread_id) == truth(emulator, thread_id)


@pytest.mark.parametrize("ties", ["reverse", "stable"])
@pytest.mark.parametrize("n", [1, 25])
async def test_new_messages_only_in_the_newest_second_are_seen(
    emulator: Emulator, mirror: Mirror, ties: str, n: int
) -> None:
    """Under stable ties the descending listing's first item is the newest second's *oldest*
    message: an ordinary pass must still see messages added to that second (25 fills the probe).
    """
    emulator.set_behaviour(ties=ties)
    (thread_id,) = emulator.seed(seed=5, threads=1, messages=12)
    track(mirror, thread_id)
    await sync(emulator, mirror)
    emulator.append_messages(thread_id, n=2)
    await sync(emulator, mirror)  # the newest second now holds several messages
    assert exported(mirror, thread_id) == truth(emulator, thread_id)
    emulator.append_messages(thread_id, n=n)  # same second, no tick
    report = await sync(emulator, mirror)
    assert report.ok
    assert report.counts.added == n
    assert exported(mirror, thread_id) == truth(emulator, thread_id)
    emulator.reset_stats()
    report = await sync(emulator, mirror)
    assert report.counts.writes == 0
    busy = sum(m["status"] == "in_progress" for m in truth(emulator, thread_id))
    assert report.outcomes[0].rescans == 0
    # Idle again: one probe; when the newest second overflows the stable-ties probe, a forward
    # page and a GET of the high-water message also prove nothing is newer.
    overflow = ties == "stable" and n > STABLE_PROBE_LIMIT
    assert report.requests == (3 if overflow else 1) + busy


async def test_interrupted_first_sync_resumes_where_it_stopped(
    emulator: Emulator, mirror: Mirror
) -> None:
    """A first sync that fails mid-way keeps its pages and continues from its cursor."""
    (thread_id,) = emulator.seed(seed=4, threads=1, messages=500)
    track(mirror, thread_id)
    # Pages 1-2 succeed, then every list call fails until the client's retries run out.
    calls = {"n": 0}
    real = emulator.list_messages

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("order") == "desc":
            calls["n"] += 1
        if 3 <= calls["n"] <= 50:
            raise WireError(503, "busy", type_="server_error")
        return real(*args, **kwargs)

    emulator.list_messages = flaky  # type: ignore[method-assign]
    first = await sync(emulator, mirror)
    assert not first.ok
    emulator.list_messages = real  # type: ignore[method-assign]
    assert len(exported(mirror, thread_id)) == 200
    with mirror.read() as session:
        state = session.get(SyncState, thread_id)
        assert state is not None
        assert state.initial_after is not None
    emulator.reset_stats()
    report = await sync(emulator, mirror)
    assert report.ok
    assert exported(mirror, thread_id) == truth(emulator, thread_id)
    # Three remaining pages of the first sync (no restart from the head), then one probe for
    # messages posted since the interrupted pass began (none here).
    assert report.requests == 3 + 1


async def test_resumed_first_sync_also_gets_messages_posted_meanwhile(
    emulator: Emulator, mirror: Mirror
) -> None:
    """Messages posted after an interrupted first sync began are newer than its high-water mark:
    the pass that completes the first sync mirrors them too, in order."""
    (thread_id,) = emulator.seed(seed=4, threads=1, messages=30)
    track(mirror, thread_id)
    real = emulator.list_messages
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("order") == "desc":  # pages of the first sync: only the first answers
            calls["n"] += 1
            if calls["n"] > 1:
                raise WireError(503, "busy", type_="server_error")
        return real(*args, **kwargs)

    emulator.list_messages = flaky  # type: ignore[method-assign]
    retry = RetrySettings(max_attempts=1)
    async with emulated_client(emulator, retry=retry) as client:
        assert not (await sync_threads(client, mirror, page_limit=10)).ok
    emulator.list_messages = real  # type: ignore[method-assign]
    assert len(exported(mirror, thread_id)) == 10
    emulator.append_messages(thread_id, n=2)  # the newest second, after the high-water mark
    report = await sync(emulator, mirror, page_limit=10)
    assert report.ok
    assert exported(mirror, thread_id) == truth(emulator, thread_id)


@pytest.mark.parametrize("cursor_missing", ["404", "400", "empty", "ignore", "keep_place"])
async def test_ordinary_pass_recovers_when_the_cursor_message_is_deleted(
    emulator: Emulator, mirror: Mirror, cursor_missing: str
) -> None:
    """Under every cursor behaviour, an ordinary pass keeps seeing new messages after the
    high-water message is deleted: nothing stalls, nothing is duplicated."""
    emulator.set_behaviour(cursor_missing=cursor_missing)
    (thread_id,) = emulator.seed(seed=5, threads=1, messages=120)
    track(mirror, thread_id)
    await sync(emulator, mirror)
    newest = truth(emulator, thread_id)[-1]["id"]
    emulator.delete_message(thread_id, newest)
    emulator.advance_clock(5)
    emulator.append_messages(thread_id, n=7)
    report = await sync(emulator, mirror)
    assert report.ok, report.failed
    live = [m["id"] for m in exported(mirror, thread_id)]
    want = [m["id"] for m in truth(emulator, thread_id)]
    assert len(live) == len(set(live))
    assert [i for i in live if i != newest] == want
    # A later ordinary pass also sees new messages (no silent stall).
    emulator.advance_clock(5)
    emulator.append_messages(thread_id, n=2)
    await sync(emulator, mirror)
    final = await sync(emulator, mirror, full=True)
    assert final.ok
    assert exported(mirror, thread_id) == truth(emulator, thread_id)


@pytest.mark.parametrize("cursor_missing", ["404", "400", "empty", "ignore", "keep_place"])
async def test_deleted_newest_without_new_messages(
    emulator: Emulator, mirror: Mirror, cursor_missing: str
) -> None:
    """The newest message deleted and nothing new: the pass steps back, then new ones still land."""
    emulator.set_behaviour(cursor_missing=cursor_missing)
    (thread_id,) = emulator.seed(seed=6, threads=1, messages=20)
    track(mirror, thread_id)
    await sync(emulator, mirror)
    emulator.delete_message(thread_id, truth(emulator, thread_id)[-1]["id"])
    assert (await sync(emulator, mirror)).ok
    emulator.advance_clock(3)
    emulator.append_messages(thread_id, n=4)
    assert (await sync(emulator, mirror)).ok
    live = [m["id"] for m in exported(mirror, thread_id)]
    assert {m["id"] for m in truth(emulator, thread_id)} <= set(live)
    assert len(live) == len(set(live))


@pytest.mark.parametrize("census", [True, False], ids=["census", "page-by-page"])
async def test_full_pass_applies_deletions_edits_and_restores(
    emulator: Emulator, mirror: Mirror, census: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconcile tombstones what disappeared, applies remote metadata, and counts each kind:
    comparing with a census of the thread read once, or (a thread over the census limit) page by
    page."""
    if not census:
        monkeypatch.setattr(Census, "LIMIT", 50)
    (thread_id,) = emulator.seed(seed=8, threads=1, messages=260)
    track(mirror, thread_id)
    await sync(emulator, mirror)
    msgs = truth(emulator, thread_id)
    for m in msgs[10:15] + msgs[150:152]:
        emulator.delete_message(thread_id, m["id"])
    emulator.edit_metadata(thread_id, msgs[200]["id"], {"reviewed": "yes"})
    report = await sync(emulator, mirror, full=True)
    assert report.ok
    assert (report.counts.deleted, report.counts.changed, report.counts.added) == (7, 1, 0)
    assert exported(mirror, thread_id) == truth(emulator, thread_id)
    with_deleted = exported(mirror, thread_id, include_deleted=True)
    assert [m["id"] for m in with_deleted] == [m["id"] for m in msgs]
    again = await sync(emulator, mirror, full=True)
    assert again.counts.writes == 0


def _count_calls(monkeypatch: pytest.MonkeyPatch, mirror: Mirror, method: str) -> dict[str, int]:
    """Count the calls of ``mirror.<method>`` (``run``: reads, ``run_write``: transactions)."""
    calls = {"n": 0}
    real = getattr(mirror, method)

    async def counted(fn: Any, *args: Any) -> Any:
        calls["n"] += 1
        return await real(fn, *args)

    monkeypatch.setattr(mirror, method, counted)
    return calls


async def test_an_unchanged_full_pass_reads_the_mirror_once_not_per_page(
    emulator: Emulator, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within the census limit an unchanged page costs no read: a reconcile reads the same
    number of times whether the thread comes in 3 pages or 13."""
    seeded(emulator, mirror, seed=8, threads=1, messages=260)
    assert (await sync(emulator, mirror)).ok
    reads = _count_calls(monkeypatch, mirror, "run")
    by_pages = {}
    for limit in (100, 20):
        reads["n"] = 0
        report = await sync(emulator, mirror, full=True, page_limit=limit)
        assert report.ok
        assert report.counts.writes == 0
        by_pages[limit] = reads["n"]
    assert by_pages[20] == by_pages[100]
    monkeypatch.setattr(Census, "LIMIT", 100)  # over the limit: one read per unchanged page
    reads["n"] = 0
    assert (await sync(emulator, mirror, full=True, page_limit=20)).counts.writes == 0
    # 13 pages: the 12 before the last each read (the last is planned in its write transaction),
    # and the census is still tried once (it comes back empty-handed).
    assert reads["n"] - by_pages[20] == 12


async def test_an_unchanged_full_pass_records_its_end_with_the_closing_state(
    emulator: Emulator, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing changed: the walk's end (last_full_at, high-water mark, page count) is written
    with the pass's closing state, one write transaction for the thread, not two."""
    (thread_id,) = seeded(emulator, mirror, seed=8, threads=1, messages=260)
    assert (await sync(emulator, mirror)).ok
    emulator.delete_message(thread_id, truth(emulator, thread_id)[5]["id"])  # on the first page
    with mirror.read() as session:
        before = session.get(SyncState, thread_id)
        assert before is not None
        assert before.last_full_at is None
    transactions = _count_calls(monkeypatch, mirror, "run_write")
    report = await sync(emulator, mirror, full=True)
    assert report.ok
    assert report.counts.writes == 1  # the tombstone, on the first of three pages
    with mirror.read() as session:
        after = session.get(SyncState, thread_id)
        assert after is not None
    assert after.last_full_at is not None
    assert after.high_water_id == truth(emulator, thread_id)[-1]["id"]
    assert after.pages == before.pages + 2  # the page with the tombstone, and the last
    assert after.last_success_at is not None
    # The run's opening and closing records, the tombstone's page, and the closing state that
    # carries the walk's end (which had a transaction of its own: five).
    assert transactions["n"] == 4


async def test_in_progress_messages_are_refetched_until_final(
    emulator: Emulator, mirror: Mirror
) -> None:
    """An assistant message first seen in progress is re-read by ordinary passes until final."""
    (thread_id,) = emulator.seed(seed=9, threads=1, messages=5)
    emulator.advance_clock(2)
    (busy,) = emulator.append_messages(
        thread_id,
        messages=[{"role": "assistant", "content": "partial", "status": "in_progress"}],
    )
    track(mirror, thread_id)
    await sync(emulator, mirror)
    busy_ids = [m["id"] for m in truth(emulator, thread_id) if m["status"] == "in_progress"]
    assert busy["id"] in busy_ids
    report = await sync(emulator, mirror)
    assert report.requests == 1 + len(busy_ids)  # the probe, one GET per in-progress message
    for message_id in busy_ids:
        emulator.finish_message(thread_id, message_id)
    report = await sync(emulator, mirror)
    assert report.counts.changed == len(busy_ids)
    assert exported(mirror, thread_id) == truth(emulator, thread_id)
    assert (await sync(emulator, mirror)).requests == 1


async def test_a_deleted_thread_is_marked_gone_and_kept(emulator: Emulator, mirror: Mirror) -> None:
    """404 on a thread that synced before: marked gone, mirror kept, other threads unaffected."""
    a, b = emulator.seed(seed=10, threads=2, messages=15)
    track(mirror, a, b)
    await sync(emulator, mirror)
    kept = exported(mirror, a)
    emulator.delete_thread(a)
    emulator.append_messages(b, n=2)
    report = await sync(emulator, mirror)
    assert not report.ok  # a thread newly gone is news: the run says so (exit 1)
    assert [o.thread_id for o in report.gone] == [a]
    assert not report.failed
    results = {o.thread_id: o.result for o in report.outcomes}
    assert results == {a: "gone", b: "synced"}
    assert (await sync(emulator, mirror)).ok  # known gone, not due for its re-check
    assert exported(mirror, a) == kept
    assert exported(mirror, b) == truth(emulator, b)


async def test_unknown_thread_fails_without_stopping_others(
    emulator: Emulator, mirror: Mirror
) -> None:
    """A thread id that never existed is a failure with its reason; the rest still sync."""
    (good,) = emulator.seed(seed=11, threads=1, messages=10)
    track(mirror, good, "thread_doesnotexist")
    report = await sync(emulator, mirror)
    assert not report.ok
    (failed,) = report.failed
    assert failed.thread_id == "thread_doesnotexist"
    assert "not found" in (failed.error or "")
    assert exported(mirror, good) == truth(emulator, good)


@pytest.mark.parametrize("fault", ["429", "500", "503", "truncate", "drop"])
async def test_faults_do_not_change_the_result(
    emulator: Emulator, mirror: Mirror, fault: str
) -> None:
    """Under a storm of one fault kind the export still equals the truth."""
    ids = seeded(emulator, mirror, seed=12, threads=3, messages=220)
    emulator.add_fault(FaultRule(fault=fault, times=None, probability=0.3))  # type: ignore[arg-type]
    await sync(emulator, mirror)
    emulator.clear_faults()
    report = await sync(emulator, mirror)
    assert report.ok
    for thread_id in ids:
        assert exported(mirror, thread_id) == truth(emulator, thread_id)


async def test_behaviour_object_is_respected(emulator: Emulator) -> None:
    """Sanity: the emulator reports the behaviour the tests rely on."""
    emulator.set_behaviour(cursor_missing="empty")
    assert emulator.behaviour == Behaviour(cursor_missing="empty")


async def test_a_long_server_wait_parks_that_thread_only(
    emulator: Emulator, mirror: Mirror
) -> None:
    """A 429 asking for longer than the cap parks its thread for a later pass; others go on."""
    slow, fast = emulator.seed(seed=13, threads=2, messages=30)
    track(mirror, slow, fast)
    emulator.add_fault(FaultRule(fault="429", times=None, thread_id=slow, retry_after=600))
    report = await sync(emulator, mirror)
    results = {o.thread_id: o.result for o in report.outcomes}
    assert results == {slow: "parked", fast: "synced"}
    assert not report.ok
    assert exported(mirror, fast) == truth(emulator, fast)
    with mirror.read() as session:
        state = session.get(SyncState, slow)
        assert state is not None
        assert state.parked_until is not None
    emulator.clear_faults()
    emulator.reset_stats()
    again = await sync(emulator, mirror)
    parked = next(o for o in again.outcomes if o.thread_id == slow)
    assert parked.result == "parked"
    assert "parked until" in (parked.error or "")
    assert parked.requests == 0


async def test_a_failed_tie_probe_stores_nothing_rather_than_a_guess(
    emulator: Emulator, mirror: Mirror
) -> None:
    """The page whose ties need the probe is not stored in a guessed order when the probe fails;
    the next pass learns the order and mirrors the thread right."""
    emulator.set_behaviour(ties="stable")
    thread = emulator.create_thread({})["id"]
    emulator.append_messages(thread, n=2)  # one second: a tie the first page cannot rank alone
    track(mirror, thread)
    real = emulator.list_messages
    calls = {"n": 0}

    def failing_after_first(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 1:
            raise WireError(503, "down", type_="server_error")
        return real(*args, **kwargs)

    emulator.list_messages = failing_after_first  # type: ignore[method-assign]
    retry = RetrySettings(max_attempts=2, initial_delay=0.001, max_delay=0.001)
    async with emulated_client(emulator, retry=retry) as client:
        report = await sync_threads(client, mirror)
    emulator.list_messages = real  # type: ignore[method-assign]
    assert not report.ok
    assert "could not learn how the server orders" in str(report.failed[0].error)
    assert exported(mirror, thread) == []
    assert (await sync(emulator, mirror)).ok
    assert exported(mirror, thread) == truth(emulator, thread)
