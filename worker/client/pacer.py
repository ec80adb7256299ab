"""The client-side pacer shared by every task: a request rate and a shared pause after a 429.

The rate is a GCRA (the generic cell rate algorithm, i.e. a token bucket kept as one timestamp):
each request reserves the next free slot, so concurrent callers are served first come, first served
without waking each other up to compete. A pause (``pause_for`` / ``pause_until``) holds every
caller, including those already waiting for a slot: one throttled answer slows everybody, so a 429
storm does not multiply into one retry per task.

In replicas mode the rate is this replica's share of a global budget and changes as replicas come
and go (:meth:`Pacer.set_rate`, driven by ``worker/daemon/replicas.py``), and it is granted only
until a deadline: past it (or while held, ``until=-inf``) every caller waits for the next grant.
The bucket's level, in requests, is kept across a change, and a change sends every caller already
holding a slot back into the queue, so over any window the requests sent are at most ``burst``
plus the integral of the rate in force: the sum of the replicas' shares bounds the sum of their
requests.
"""

from __future__ import annotations

import math
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
        self._clock = clock
        self._sleep = sleep
        self._tat = float("-inf")
        self._paused_until = float("-inf")
        # Bumped each time the pause is extended, so a waiter can tell "a pause began while I slept"
        # from "I woke a hair early" (asyncio may fire a timer up to its clock resolution early).
        self._pause_epoch = 0
        self._interval = 0.0
        self._until = math.inf  # the rate is granted until then (clock time)
        self._rate_epoch = 0  # bumped when the rate changes or the grant ends: slots given are void
        self._holding = 0  # callers asleep on a slot of the current rate epoch
        self._granted: anyio.Event | None = None  # set at the next grant (made on first wait)
        self.set_rate(rate)

    def set_rate(self, rate: float | None, *, until: float = math.inf) -> None:
        """Change the limit, granted until ``until`` (clock time; ``-inf``: hold every caller).

        Replicas: each one's share of the budget follows the number of live replicas, granted
        until its count could be stale. The bucket keeps its level in requests (``tat`` rescaled),
        so a change neither banks nor forfeits a burst. A new rate, or a grant ending, voids the
        slots already given (and gives them back): their callers queue again at the new rate when
        they wake, so every request goes on a slot of the rate in force. Call on the event loop.
        """
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive or None")
        now = self._clock()
        old = self._interval
        self.rate = rate
        self._interval = 0.0 if rate is None else 1.0 / rate
        self._tolerance = (self._burst - 1) * self._interval
        if old > 0 and self._interval > 0 and self._tat > now:
            self._tat = now + (self._tat - now) * self._interval / old
        if self._interval != old or until < self._until:
            self._rate_epoch += 1
            # The voided slots are given back: their callers take new ones when they wake.
            self._tat -= self._holding * self._interval
            self._holding = 0
        self._until = until
        if until > now and self._granted is not None:
            self._granted.set()
            self._granted = None

    @property
    def granted_until(self) -> float:
        """Clock time until which the rate is granted (``inf`` outside replicas mode)."""
        return self._until

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
            if now >= self._until:  # held, or the grant lapsed: wait for the next one
                if self._granted is None:
                    self._granted = anyio.Event()
                await self._granted.wait()
                continue
            epoch = self._pause_epoch
            rates = self._rate_epoch
            start = max(now, self._paused_until)
            if self.rate is None:
                at = start
            else:
                slot = reserve(self._tat, start, self._interval, self._tolerance)
                self._tat = slot.tat
                at = slot.at
            if at > now:
                self._holding += 1
                try:
                    await self._sleep(at - now)
                finally:
                    if self._rate_epoch == rates:
                        self._holding -= 1
            elif self.rate is None:
                return  # nothing to wait for; unlimited callers take no checkpoint here
            if self._rate_epoch != rates or self._clock() >= self._until:
                continue  # the rate changed or the grant ended meanwhile: this slot is void
            if self._pause_epoch == epoch or self._clock() >= self._paused_until:
                return
            # A new pause began while we waited: our slot is void, queue again behind the pause.
