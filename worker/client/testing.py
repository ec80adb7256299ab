"""Test mode for time: a virtual monotonic clock whose ``sleep`` jumps time instead of waiting.

Public on purpose (as stamina's test mode is): any suite that drives :class:`ApiClient` or
:class:`Pacer` can pass ``clock=fake.now, sleep=fake.sleep`` and run retries and pacing instantly.
"""

from __future__ import annotations

import heapq
import itertools

import anyio.lowlevel

# How many scheduler rounds the earliest sleeper waits before time jumps to it, so that tasks that
# are runnable right now get to reach their own sleep (which may wake earlier) first.
_SETTLE_ROUNDS = 3


class FakeClock:
    """Virtual time: sleepers wake in wake-time order and the clock jumps to each wake time.

    Concurrent sleepers behave as on a real clock (two tasks sleeping 1 s from the same instant
    both wake at +1 s), which is what pacing tests need. ``sleeps`` records every requested wait.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.time = start
        self.sleeps: list[float] = []
        self._waiters: list[tuple[float, int]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self.time

    def advance(self, seconds: float) -> None:
        """Move time forward by hand (for tests of code that only reads the clock)."""
        self.time += max(0.0, seconds)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        entry = (self.time + max(0.0, seconds), next(self._order))
        heapq.heappush(self._waiters, entry)
        rounds = 0
        try:
            while True:
                # A real sleep is a checkpoint: let every other task run (and maybe go to sleep).
                await anyio.lowlevel.checkpoint()
                rounds = rounds + 1 if self._waiters[0] == entry else 0
                if rounds >= _SETTLE_ROUNDS:
                    break
        except BaseException:
            # Cancelled: forget this sleeper so it cannot hold back the ones behind it.
            self._waiters.remove(entry)
            heapq.heapify(self._waiters)
            raise
        heapq.heappop(self._waiters)
        self.time = max(self.time, entry[0])
