"""The pure retry policy: status classes, server wait parsing, backoff bounds."""

from __future__ import annotations

import email.utils
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.client.retry import backoff_delay, classify, parse_retry_after


@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        (200, "ok"),
        (201, "ok"),
        (408, "retry"),
        (409, "retry"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
        (599, "retry"),
        (401, "auth"),
        (403, "auth"),
        (404, "not_found"),
        (400, "permanent"),
        (422, "permanent"),
        (302, "permanent"),
    ],
)
def test_classify(code: int, verdict: str) -> None:
    """As the openai SDK: 408/409/429/5xx retry, 401/403 auth, 404 not found, else permanent."""
    assert classify(code) == verdict


def test_retry_after_ms_wins_over_seconds() -> None:
    """retry-after-ms (Azure, milliseconds) is preferred to retry-after when both are present."""
    assert parse_retry_after({"Retry-After-Ms": "1500", "Retry-After": "30"}) == 1.5


def test_retry_after_seconds_and_float() -> None:
    """retry-after in seconds, integer or float."""
    assert parse_retry_after({"retry-after": "7"}) == 7.0
    assert parse_retry_after({"retry-after": "0.25"}) == 0.25


def test_retry_after_http_date() -> None:
    """retry-after as an HTTP date counts from the wall clock; a past date means no wait."""
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 42, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=lambda: now) == pytest.approx(42.0)
    past = email.utils.formatdate(now - 42, usegmt=True)
    assert parse_retry_after({"retry-after": past}, now=lambda: now) == 0.0


@pytest.mark.parametrize(
    "headers",
    [{}, {"retry-after": "soon"}, {"retry-after": "-3"}, {"retry-after": "nan"}, {"x": "1"}],
)
def test_retry_after_unusable(headers: dict[str, str]) -> None:
    """Absent, garbage, negative or non-finite waits mean "the server said nothing usable"."""
    assert parse_retry_after(headers) is None


def test_bad_ms_falls_back_to_seconds() -> None:
    """A broken retry-after-ms does not hide a good retry-after."""
    assert parse_retry_after({"retry-after-ms": "inf", "retry-after": "3"}) == 3.0


@given(
    millis=st.floats(min_value=0, max_value=1e9, allow_nan=False),
    seconds=st.integers(min_value=0, max_value=10**6),
)
def test_parse_retry_after_ms_property(millis: float, seconds: int) -> None:
    """For any finite non-negative retry-after-ms, the answer is that many ms, whatever else."""
    headers = {"retry-after-ms": repr(millis), "retry-after": str(seconds)}
    assert parse_retry_after(headers) == pytest.approx(millis / 1000.0)


@given(st.text(max_size=40))
def test_parse_retry_after_never_raises(text: str) -> None:
    """Any header text gives None or a finite non-negative wait; it never raises."""
    for name in ("retry-after", "retry-after-ms"):
        value = parse_retry_after({name: text})
        assert value is None or (math.isfinite(value) and value >= 0)


@given(
    attempt=st.integers(min_value=0, max_value=10_000),
    initial=st.floats(min_value=1e-3, max_value=1e3),
    cap=st.floats(min_value=1e-3, max_value=1e4),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_delay_bounds(attempt: int, initial: float, cap: float, seed: int) -> None:
    """Equal jitter: the wait lies in [step/2, step], step = min(cap, initial * 2**attempt)."""
    step = min(cap, initial * 2.0 ** min(attempt, 64))
    delay = backoff_delay(attempt, initial, cap, random.Random(seed))
    assert step / 2 <= delay <= step
    assert delay <= cap


def test_backoff_grows_then_caps() -> None:
    """The lower bound doubles per attempt until the cap is reached."""
    rng = random.Random(0)
    lows = [min(8.0, 0.5 * 2**n) / 2 for n in range(8)]
    delays = [backoff_delay(n, 0.5, 8.0, rng) for n in range(8)]
    assert all(d >= low for d, low in zip(delays, lows, strict=True))
    assert delays[-1] >= 4.0
