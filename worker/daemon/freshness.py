"""Freshness under a request budget: when each thread is checked next, and how much to claim.

The API has no change feed, so a fixed interval cannot scale (a million threads every 15 minutes is
1,100 requests/s). Each thread carries its own check interval instead (README "Freshness under a
request budget"):

- a pass that wrote anything (messages added, changed, deleted or restored) sets it to
  ``min_interval``: a thread that just changed is likely to change again;
- a pass that found nothing multiplies it by ``stretch``, up to ``max_interval``, once the thread
  has been idle for ``hold`` (default one hour: the window of the lag figure, so a thread that
  changed in the last hour is checked every ``min_interval``);
- a failed pass leaves it alone (a failure says nothing about activity) and the failure backoff
  decides the delay, exactly as before: ``interval * 2**failures`` capped at ``max_backoff``.

A healthy thread is due ``(interval - lead) * (1 - jitter * rand)`` after its check: jitter only
ever brings a check forward, and ``lead`` (two dispatch intervals: one to be claimed, one while its
batch is paced) is taken off so that the interval is a promise, not a mean. With neither bound
configured the schedule stays what it always was: ``sync_interval * (1 +- jitter)``.

Every function here is pure: plain values in, plain values out (tested with Hypothesis).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Failures beyond this many double no further (2**20 intervals is past any sane max_backoff).
MAX_DOUBLINGS = 20
# How much one batch's requests-per-pass moves the estimate the claim size is planned from.
ESTIMATE_WEIGHT = 0.2


@dataclass(frozen=True)
class Freshness:
    """The adaptive schedule's settings (``daemon.min_interval`` ... in seconds)."""

    min_interval: float
    max_interval: float
    stretch: float = 2.0
    jitter: float = 0.1
    max_backoff: float = 3600.0
    lead: float = 0.0
    # Seconds after a change during which idle checks do not stretch: a recently active thread
    # stays at min_interval (so the lag of recently changed threads can be held to it).
    hold: float = 0.0
    # False when neither bound is configured: the interval is then a mean, ``interval +- jitter``,
    # exactly the fixed schedule threadsync always had.
    promise: bool = True


def backoff_delay(interval: float, failures: int, jitter: float, cap: float, rand: float) -> float:
    """Seconds until a failing thread is tried again (``failures`` > 0; ``rand`` in [0, 1)).

    Each consecutive failure doubles the base up to ``cap`` (never below the interval itself);
    the jitter applies after the cap so a crowd of failing threads is spread too, and the result
    never exceeds the cap.
    """
    ceiling = max(cap, interval)
    base = min(ceiling, interval * 2.0 ** min(failures, MAX_DOUBLINGS))
    spread = base * jitter * (2.0 * rand - 1.0)
    return max(0.0, min(ceiling, base + spread))


def next_interval(
    f: Freshness,
    interval: float | None,
    *,
    changed: bool,
    ok: bool,
    idle_for: float | None = None,
) -> float:
    """The thread's check interval after a pass (``None``: never checked, taken as the minimum).

    ``idle_for``: seconds since a pass last found a change in the thread (None: never); within
    ``hold`` of a change an idle check keeps the minimum instead of stretching.
    """
    current = (
        f.min_interval if interval is None else min(f.max_interval, max(f.min_interval, interval))
    )
    if changed:
        return f.min_interval
    if not ok:
        return current
    if idle_for is not None and idle_for < f.hold:
        return f.min_interval
    return min(f.max_interval, current * f.stretch)


def check_delay(f: Freshness, interval: float, failures: int, rand: float) -> float:
    """Seconds from a pass until the thread is due again (``rand`` uniform in [0, 1))."""
    if failures > 0:
        return backoff_delay(interval, failures, f.jitter, f.max_backoff, rand)
    if not f.promise:
        spread = interval * f.jitter * (2.0 * rand - 1.0)  # as worker/daemon/due.py next_delay
        return max(0.0, min(interval * (1.0 + f.jitter), interval + spread))
    return max(0.0, interval - f.lead) * (1.0 - f.jitter * rand)


def overdue_ratio(now: float, due_at: float | None, interval: float) -> float:
    """How overdue a thread is relative to its interval; the claim takes the largest first.

    A thread never scheduled (``due_at`` None) is infinitely overdue. An active thread five
    seconds late on a 60 s interval (0.083) goes before an idle one an hour late on a day (0.042).
    """
    if due_at is None:
        return math.inf
    return (now - due_at) / max(interval, 1e-9)


def claim_size(budget: float, horizon: float, requests_per_pass: float, cap: int) -> int:
    """Threads to claim so their passes fit in the budget over ``horizon`` seconds.

    Claiming more would only hold leases on threads the pacer cannot serve yet (and hide them from
    another replica); claiming fewer would leave budget unused. At least one, at most ``cap``.
    """
    fits = math.floor(budget * horizon / max(requests_per_pass, 1e-9))
    return max(1, min(cap, fits))


def update_estimate(estimate: float, requests: int, passes: int) -> float:
    """Requests per pass, smoothed: a batch of first syncs must not size the next claim alone."""
    if passes <= 0:
        return estimate
    observed = max(1.0, requests / passes)
    return estimate + ESTIMATE_WEIGHT * (observed - estimate)


@dataclass(frozen=True)
class Lag:
    """Staleness (seconds since the last successful check) of the recently changed threads."""

    threads: int
    p50: float
    p99: float
    max: float


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0.0 when it is empty)."""
    if not ordered:
        return 0.0
    rank = math.ceil(q * len(ordered))
    return ordered[min(len(ordered), max(1, rank)) - 1]


def lag_of(staleness: Sequence[float]) -> Lag:
    ordered = sorted(staleness)
    return Lag(
        threads=len(ordered),
        p50=percentile(ordered, 0.50),
        p99=percentile(ordered, 0.99),
        max=ordered[-1] if ordered else 0.0,
    )
