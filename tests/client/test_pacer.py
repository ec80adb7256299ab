"""The shared pacer: GCRA maths, rate over time, and the shared pause, on a virtual clock."""

from __future__ import annotations

import itertools

import anyio
import pytest

from worker.client.pacer import Pacer, reserve
from worker.testing import FakeClock


def test_reserve_steady_rate() -> None:
    """Without burst, back-to-back arrivals are spaced exactly one interval apart."""
    tat, times = float("-inf"), []
    for _ in range(4):
        slot = reserve(tat, 10.0, 0.5, 0.0)
        tat = slot.tat
        times.append(slot.at)
    assert times == [10.0, 10.5, 11.0, 11.5]


def test_reserve_burst_then_rate() -> None:
    """A burst of N goes at once after idle time, then the steady interval resumes."""
    tat, times = float("-inf"), []
    for _ in range(5):
        slot = reserve(tat, 0.0, 1.0, 2.0)  # burst 3
        tat = slot.tat
        times.append(slot.at)
    assert times == [0.0, 0.0, 0.0, 1.0, 2.0]


def test_reserve_does_not_bank_idle_time() -> None:
    """Long idleness allows one burst only, not a backlog of every missed slot."""
    slot = reserve(0.0, 100.0, 1.0, 1.0)  # burst 2, last activity long ago
    second = reserve(slot.tat, 100.0, 1.0, 1.0)
    third = reserve(second.tat, 100.0, 1.0, 1.0)
    assert (slot.at, second.at, third.at) == (100.0, 100.0, 101.0)


@pytest.mark.anyio
async def test_concurrent_callers_hold_the_rate() -> None:
    """Many tasks at once are served first come, first served, at exactly the configured rate."""
    clock = FakeClock(start=0.0)
    pacer = Pacer(10.0, burst=1, clock=clock.now, sleep=clock.sleep)
    granted: list[float] = []

    async def caller() -> None:
        await pacer.acquire()
        granted.append(clock.now())

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(caller)
    assert granted == pytest.approx([n / 10 for n in range(20)])


@pytest.mark.anyio
async def test_unlimited_does_not_sleep() -> None:
    """rate=None and no pause: acquire never sleeps."""
    clock = FakeClock()
    pacer = Pacer(None, clock=clock.now, sleep=clock.sleep)
    for _ in range(100):
        await pacer.acquire()
    assert clock.sleeps == []


@pytest.mark.anyio
async def test_pause_holds_every_caller() -> None:
    """After pause_for(5), no caller proceeds before the deadline, even when unlimited."""
    clock = FakeClock(start=0.0)
    pacer = Pacer(None, clock=clock.now, sleep=clock.sleep)
    pacer.pause_for(5.0)
    granted: list[float] = []

    async def caller() -> None:
        await pacer.acquire()
        granted.append(clock.now())

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(caller)
    assert granted == [5.0] * 5


@pytest.mark.anyio
async def test_pause_during_wait_requeues_waiters() -> None:
    """A pause that begins while callers wait for their slots holds them too; then the rate
    resumes from the deadline (no burst of stale slots)."""
    clock = FakeClock(start=0.0)
    pacer = Pacer(1.0, burst=1, clock=clock.now, sleep=clock.sleep)
    granted: list[float] = []

    async def caller() -> None:
        await pacer.acquire()
        granted.append(clock.now())

    async def throttled() -> None:
        await clock.sleep(0.5)  # a 429 arrives half a second in, asking for 10 s
        pacer.pause_for(10.0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(throttled)
        for _ in range(4):
            tg.start_soon(caller)
    assert granted[0] == 0.0  # went before the 429
    assert all(t >= 10.5 for t in granted[1:])
    later = sorted(granted[1:])
    assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(later))


def test_earlier_deadline_does_not_shorten_a_pause() -> None:
    """pause_until only ever extends the pause."""
    clock = FakeClock(start=0.0)
    pacer = Pacer(None, clock=clock.now)
    pacer.pause_until(30.0)
    pacer.pause_for(5.0)
    assert pacer.paused_until == 30.0


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_rejects_nonsense(rate: float, burst: int) -> None:
    """A non-positive rate or a burst below one is a programming error."""
    with pytest.raises(ValueError):
        Pacer(rate, burst=burst)


@pytest.mark.anyio
async def test_a_new_rate_applies_from_the_next_request() -> None:
    """Replicas pace at their share of the budget: halving the rate doubles the spacing, from
    the last request sent on (the bucket keeps its level in requests across the change)."""
    clock = FakeClock(start=0.0)
    pacer = Pacer(10.0, burst=1, clock=clock.now, sleep=clock.sleep)
    granted: list[float] = []
    for rate in (10.0, 10.0, 5.0, 5.0, 5.0):
        pacer.set_rate(rate)
        await pacer.acquire()
        granted.append(clock.now())
    # The third request goes 0.2 s after the second: a slot 0.1 s on, at the old rate, would
    # let a replica whose share just shrank overshoot it.
    assert granted == pytest.approx([0.0, 0.1, 0.3, 0.5, 0.7])
    with pytest.raises(ValueError):
        pacer.set_rate(0.0)
