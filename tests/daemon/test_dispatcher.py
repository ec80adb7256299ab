"""The dispatcher against the in-process emulator, on SQLite and PostgreSQL.

Pinned: due threads are synced and rescheduled (interval +- jitter, backoff on failure), threads
added later are picked up by the next run, the reconcile finds deletions, and a cancelled batch
leaves finished threads rescheduled and the rest due, with no lease left behind.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from sqlmodel import select

from tests.harness import exported, truth
from worker.config import DaemonSettings, RetrySettings, Settings, SyncSettings
from worker.daemon.dispatcher import Dispatcher
from worker.daemon.due import aware
from worker.daemon.metrics import DaemonMetrics
from worker.emulator import Emulator, FaultRule, ManualClock
from worker.store.db import Mirror
from worker.store.models import SyncState, TrackedThread
from worker.store.repo import add_threads
from worker.sync.outcome import ThreadOutcome
from worker.sync.thread_pass import ThreadPass
from worker.testing import emulated_client

pytestmark = pytest.mark.anyio

NOW = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.at = NOW

    def __call__(self) -> datetime:
        return self.at


def settings(mirror: Mirror, **daemon: Any) -> Settings:
    d = {"sync_interval": 100.0, "sync_jitter": 0.1, "max_backoff": 1000.0, **daemon}
    return Settings(
        database_url=mirror.safe_url,
        daemon=DaemonSettings(**d),
        sync=SyncSettings(concurrency=4),
    )


def track(mirror: Mirror, *ids: str) -> None:
    with mirror.write() as session:
        add_threads(session, ids)


def next_times(mirror: Mirror) -> dict[str, datetime | None]:
    with mirror.read() as session:
        return {
            row.thread_id: aware(row.next_sync_at) for row in session.exec(select(TrackedThread))
        }


def leases(mirror: Mirror) -> list[str]:
    with mirror.read() as session:
        return [r.thread_id for r in session.exec(select(TrackedThread)) if r.lease_owner]


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(clock=ManualClock(), seed=11)


async def run_with(
    emulator: Emulator,
    mirror: Mirror,
    body: Callable[[Dispatcher], Any],
    *,
    clock: Clock | None = None,
    metrics: DaemonMetrics | None = None,
    **daemon: Any,
) -> Any:
    async with emulated_client(emulator, retry=RetrySettings(max_attempts=2)) as client:
        dispatcher = Dispatcher(
            client,
            mirror,
            settings(mirror, **daemon),
            owner="test",
            metrics=metrics,
            now=clock or Clock(),
        )
        return await body(dispatcher)


async def test_fresh_threads_are_synced_and_rescheduled_within_the_jitter(
    emulator: Emulator, mirror: Mirror
) -> None:
    """A first dispatch mirrors every never-synced thread and schedules each interval +- 10% on."""
    ids = emulator.seed(seed=2, threads=5, messages=30)
    track(mirror, *ids)
    metrics = DaemonMetrics()
    result = await run_with(emulator, mirror, lambda d: d.dispatch_once(), metrics=metrics)
    assert result.claimed == 5
    assert result.failed == 0
    assert exported(mirror) == truth(emulator)
    for due in next_times(mirror).values():
        assert due is not None
        assert NOW + timedelta(seconds=90) <= due <= NOW + timedelta(seconds=110)
    assert leases(mirror) == []
    sample = metrics.registry.get_sample_value
    assert sample("threadsync_messages_mirrored_total", {"change": "added"}) == 150
    assert sample("threadsync_thread_passes_total", {"result": "synced"}) == 5


async def test_only_due_threads_are_synced_and_added_ones_join_the_next_run(
    emulator: Emulator, mirror: Mirror
) -> None:
    """A second run before the interval sends nothing; a thread tracked meanwhile is synced."""
    ids = emulator.seed(seed=3, threads=3, messages=5)
    track(mirror, *ids[:2])
    clock = Clock()

    async def body(d: Dispatcher) -> list[int]:
        first = await d.dispatch_once()
        emulator.reset_stats()
        track(mirror, ids[2])
        clock.at = NOW + timedelta(seconds=30)
        second = await d.dispatch_once()
        sent = sum(n for by in emulator.stats()["routes"].values() for n in by.values())
        clock.at = NOW + timedelta(seconds=200)
        third = await d.dispatch_once()
        return [first.claimed, second.claimed, sent, third.claimed]

    first, second, sent_for_one, third = await run_with(emulator, mirror, body, clock=clock)
    assert (first, second, third) == (2, 1, 3)
    assert 1 <= sent_for_one <= 3  # one small thread: its first sync, nothing for the others
    assert exported(mirror) == truth(emulator)


async def test_a_failing_thread_backs_off_exponentially(emulator: Emulator, mirror: Mirror) -> None:
    """Each consecutive failure doubles the wait; success returns it to the interval."""
    ids = emulator.seed(seed=4, threads=2, messages=3)
    bad = ids[0]
    track(mirror, *ids)
    emulator.add_fault(FaultRule("500", times=None, thread_id=bad))
    clock = Clock()

    async def body(d: Dispatcher) -> list[float]:
        waits: list[float] = []
        for _ in range(3):
            await d.dispatch_once()
            due = next_times(mirror)[bad]
            assert due is not None
            waits.append((due - clock.at).total_seconds())
            clock.at = due
        emulator.clear_faults()
        await d.dispatch_once()
        due = next_times(mirror)[bad]
        assert due is not None
        waits.append((due - clock.at).total_seconds())
        return waits

    waits = await run_with(emulator, mirror, body, clock=clock)
    for got, base in zip(waits, [200, 400, 800, 100], strict=True):
        assert base * 0.9 <= got <= base * 1.1
    with mirror.read() as session:
        state = session.get(SyncState, bad)
        assert state is not None
        assert state.consecutive_failures == 0


async def test_reconcile_walks_every_thread_and_finds_deletions(
    emulator: Emulator, mirror: Mirror
) -> None:
    """The reconcile passes over every active thread in batches, not due or not."""
    ids = emulator.seed(seed=5, threads=5, messages=12)
    track(mirror, *ids)

    async def body(d: Dispatcher) -> int:
        await d.dispatch_once()
        victim = emulator.truth()["threads"][ids[3]][4]["id"]
        emulator.delete_message(ids[3], victim)
        d.batch = 2
        result = await d.reconcile()
        return int(result.finished)

    assert await run_with(emulator, mirror, body) == 5
    assert exported(mirror) == truth(emulator)
    assert leases(mirror) == []


class CancelAfter(DaemonMetrics):
    """Cancels the given scope once ``n`` threads have finished."""

    def __init__(self, n: int, scope: anyio.CancelScope) -> None:
        super().__init__()
        self.n, self.scope = n, scope

    def record_outcome(self, outcome: ThreadOutcome) -> None:
        super().record_outcome(outcome)
        self.n -= 1
        if self.n == 0:
            self.scope.cancel()


async def test_a_cancelled_batch_reschedules_the_finished_and_releases_the_rest(
    emulator: Emulator, mirror: Mirror
) -> None:
    """Shutdown mid-batch: no lease left, finished threads have a next time, the rest stay due."""
    ids = emulator.seed(seed=6, threads=6, messages=250)
    track(mirror, *ids)
    scope = anyio.CancelScope()
    metrics = CancelAfter(2, scope)

    async def body(d: Dispatcher) -> None:
        d.settings.sync.concurrency = 1
        with scope:
            await d.dispatch_once()

    await run_with(emulator, mirror, body, metrics=metrics)
    times = next_times(mirror)
    assert leases(mirror) == []
    scheduled = [t for t, due in times.items() if due is not None]
    assert 2 <= len(scheduled) < 6
    # The rest are still due and a later run completes the mirror.
    result = await run_with(emulator, mirror, lambda d: d.dispatch_once())
    assert result.claimed == 6 - len(scheduled)
    assert exported(mirror) == truth(emulator)


async def test_the_lanes_share_sync_concurrency_passes_in_flight(
    emulator: Emulator, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both dispatch lanes claim and sync at once, yet no more than ``sync.concurrency`` passes
    are in flight in the whole process (each lane used to run that many of its own)."""
    ids = emulator.seed(seed=7, threads=24, messages=3)
    track(mirror, *ids)
    running, peak, claims = 0, 0, 0
    original = ThreadPass.run

    async def counted(self: ThreadPass, *, full: bool = False) -> ThreadOutcome:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            return await original(self, full=full)
        finally:
            running -= 1

    monkeypatch.setattr(ThreadPass, "run", counted)

    async def body(d: Dispatcher) -> int:
        d.batch = 8  # each lane claims 4 at a time: both lanes have passes to run
        claim = d._claim

        def noted(*args: Any) -> list[str]:
            nonlocal claims
            got = claim(*args)
            claims += bool(got)
            return got

        d._claim = noted  # type: ignore[method-assign,assignment]
        total = await d.dispatch()
        return int(total.finished)

    assert await run_with(emulator, mirror, body) == 24
    assert claims >= 6  # 24 threads, 4 a claim: the lanes claimed batch after batch
    assert peak == 4  # sync.concurrency (settings()), not 2 lanes x 4
    assert exported(mirror) == truth(emulator)
    assert leases(mirror) == []
