"""Retry policy as plain functions: which answers to retry, how long to wait, what the server asked.

The client (:mod:`worker.client.api`) owns the loop; everything here is pure so the maths can be
tested exhaustively. Time enters only through the :data:`Clock` / :data:`Sleep` injection points,
which tests replace with :class:`worker.testing.FakeClock`.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

Clock = Callable[[], float]
"""Monotonic seconds (``time.monotonic`` in production)."""

Sleep = Callable[[float], Awaitable[None]]
"""Waits the given seconds (``anyio.sleep`` in production)."""

Verdict = Literal["retry", "permanent", "auth", "not_found", "ok"]

RETRY_STATUSES = frozenset({408, 409, 429})


def classify(status: int) -> Verdict:
    """What an HTTP status means for the caller (the same split as the openai SDK)."""
    if 200 <= status < 300:
        return "ok"
    if status in RETRY_STATUSES or status >= 500:
        return "retry"
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    # 400, 422 and the rest; also 1xx/3xx, which we never ask for (redirects are not followed so
    # a credential is never replayed to another host).
    return "permanent"


def parse_retry_after(
    headers: Mapping[str, str], *, now: Callable[[], float] = time.time
) -> float | None:
    """The wait the server asked for, in seconds, or None when it asked for nothing usable.

    ``retry-after-ms`` (float milliseconds, Azure's) wins over ``retry-after`` (seconds, or an HTTP
    date measured against the wall clock ``now``). Negative or non-finite values are ignored; a date
    in the past means "now" (0.0).
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    millis = _finite(lowered.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    seconds = _finite(raw)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" dates parse naive; RFC 9110 dates are always GMT
        return None
    return max(0.0, when.timestamp() - now())


def _finite(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def backoff_delay(attempt: int, initial: float, cap: float, rng: random.Random) -> float:
    """Wait before retry number ``attempt + 1`` (``attempt`` = retries already taken, from 0).

    Exponential ``initial * 2**attempt`` capped at ``cap``, with *equal jitter*: half the step is
    kept and the other half drawn uniformly, so the wait lies in ``[step/2, step]``. Unlike full
    jitter it never degenerates to an immediate retry, which matters when many tasks hit the same
    failing server at once; unlike no jitter it still spreads them apart.
    """
    # The exponent is clamped so a huge attempt number cannot raise OverflowError; a product that
    # still overflows is inf as a float, and the cap bounds it.
    step = min(cap, initial * 2.0 ** min(max(attempt, 0), 64))
    half = step / 2.0
    return half + rng.uniform(0.0, half)
