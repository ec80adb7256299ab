"""The client-side pacer shared by every task: a request rate and a shared pause after a 429.

The rate is a GCRA (the generic cell rate algorithm, i.e. a token bucket kept as one timestamp):
each request reserves the next free slot, so concurrent callers are served first come, first served
without waking each other up to compete. A pause (``pause_for`` / ``pause_until``) holds every
caller, including those already waiting for a slot: one throttled answer slows everybody, so a 429
storm does not multiply into one retry per task.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio

from worker.client.retry import Clock, Sleep


@dataclass(frozen=True)
class Slot:
    """The outcome of one reservation: when the request may go, and the bucket's new state."""

    at: float
    tat: float


def reserve(tat: float, now: float, interval: float, tolerance: float) -> Slot:
    """GCRA reservation for a request arriving at ``now``.

    ``tat`` is the theoretical arrival time of the next request at the steady rate; ``interval`` is
    ``1/rate``; ``tolerance`` is how far ahead of the steady schedule a burst may run
    (``(burst - 1) * interval``). The request goes at ``max(now, tat - tolerance)`` and pushes the
    schedule one interval on from ``max(tat, now)``: idle time is not banked beyond the burst.
    """
    start = max(tat, now)
    return Slot(at=max(now, start - tolerance), tat=start + interval)


class Pacer:
    """Requests-per-second limit (``rate=None``: unlimited) plus a shared pause, for one process."""

    def __init__(
        self,
        rate: float | None,
        *,
        burst: int = 2,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive or None")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self._burst = burst
        self.set_rate(rate)
        self._clock = clock
        self._sleep = sleep
        self._tat = float("-inf")
        self._paused_until = float("-inf")
        # Bumped each time the pause is extended, so a waiter can tell "a pause began while I slept"
        # from "I woke a hair early" (asyncio may fire a timer up to its clock resolution early).
        self._pause_epoch = 0

    def set_rate(self, rate: float | None) -> None:
        """Change the limit from the next request on (replicas: each one's share of the budget
        follows the number of live replicas). Requests already given a slot keep it."""
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive or None")
        self.rate = rate
        self._interval = 0.0 if rate is None else 1.0 / rate
        self._tolerance = (self._burst - 1) * self._interval

    @property
    def paused_until(self) -> float:
        """Clock time before which no caller of :meth:`acquire` proceeds."""
        return self._paused_until

    def pause_until(self, deadline: float) -> None:
        """Hold every caller until ``deadline`` (clock time); an earlier one changes nothing."""
        if deadline > self._paused_until:
            self._paused_until = deadline
            self._pause_epoch += 1

    def pause_for(self, seconds: float) -> None:
        """Hold every caller for ``seconds`` from now (a server's ``retry-after`` on a 429)."""
        self.pause_until(self._clock() + max(0.0, seconds))

    async def acquire(self) -> None:
        """Wait until this request may go: after any pause, at no more than ``rate`` per second."""
        while True:
            now = self._clock()
            epoch = self._pause_epoch
            start = max(now, self._paused_until)
            if self.rate is None:
                at = start
            else:
                slot = reserve(self._tat, start, self._interval, self._tolerance)
                self._tat = slot.tat
                at = slot.at
            if at > now:
                await self._sleep(at - now)
            elif self.rate is None:
                return  # nothing to wait for; unlimited callers take no checkpoint here
            if self._pause_epoch == epoch or self._clock() >= self._paused_until:
                return
            # A new pause began while we waited: our slot is void, queue again behind the pause.
