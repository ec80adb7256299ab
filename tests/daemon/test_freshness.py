"""The adaptive interval, the check delay, the claim size and the lag maths (pure, Hypothesis)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.daemon.due import Cadence, next_delay
from worker.daemon.freshness import (
    Freshness,
    backoff_delay,
    check_delay,
    claim_size,
    lag_of,
    next_interval,
    overdue_ratio,
    percentile,
    update_estimate,
)

F = Freshness(min_interval=60.0, max_interval=3600.0, stretch=2.0, jitter=0.1, lead=10.0)

bounds = st.tuples(st.floats(0.01, 1e5), st.floats(0.01, 1e5)).map(sorted)
freshness = st.builds(
    lambda b, stretch, jitter, cap, lead: Freshness(b[0], b[1], stretch, jitter, cap, lead),
    bounds,
    st.floats(1.0, 10.0),
    st.floats(0.0, 1.0),
    st.floats(0.01, 1e6),
    st.floats(0.0, 100.0),
)
intervals = st.none() | st.floats(0.0, 1e6)
rands = st.floats(0.0, 1.0, exclude_max=True)


def test_idle_checks_stretch_the_interval_to_the_maximum_and_a_change_resets_it() -> None:
    """60 -> 120 -> ... -> 3600 (capped) on idle checks; one change brings it back to 60."""
    interval: float | None = None
    seen = []
    for _ in range(8):
        interval = next_interval(F, interval, changed=False, ok=True)
        seen.append(interval)
    assert seen == [120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0, 3600.0, 3600.0]
    assert next_interval(F, interval, changed=True, ok=True) == 60.0
    assert next_interval(F, interval, changed=True, ok=False) == 60.0


def test_within_the_hold_an_idle_check_keeps_the_minimum() -> None:
    """Changed 10 minutes ago with a one-hour hold: still the minimum; an hour on: stretching."""
    held = Freshness(60.0, 3600.0, stretch=2.0, hold=3600.0)
    assert next_interval(held, 60.0, changed=False, ok=True, idle_for=600.0) == 60.0
    assert next_interval(held, 60.0, changed=False, ok=True, idle_for=3600.0) == 120.0
    assert next_interval(held, 60.0, changed=False, ok=True, idle_for=None) == 120.0
    assert next_interval(held, 480.0, changed=False, ok=False, idle_for=10.0) == 480.0


def test_a_failed_pass_keeps_the_interval() -> None:
    """A failure says nothing about activity: the interval stays, the backoff decides the delay."""
    assert next_interval(F, 480.0, changed=False, ok=False) == 480.0
    assert next_interval(F, None, changed=False, ok=False) == 60.0


@given(
    f=freshness,
    interval=intervals,
    changed=st.booleans(),
    ok=st.booleans(),
    hold=st.floats(0.0, 1e5),
    idle_for=st.none() | st.floats(0.0, 1e6),
)
def test_interval_always_within_the_bounds(
    f: Freshness,
    interval: float | None,
    changed: bool,
    ok: bool,
    hold: float,
    idle_for: float | None,
) -> None:
    """Whatever was stored (even out of bounds after a settings change), the next is in bounds;
    a change, or an idle check within the hold, gives the minimum; an idle success past the hold
    never shortens it."""
    f = dataclasses.replace(f, hold=hold)
    new = next_interval(f, interval, changed=changed, ok=ok, idle_for=idle_for)
    assert f.min_interval <= new <= f.max_interval
    held = idle_for is not None and idle_for < hold
    if changed or (ok and held):
        assert new == f.min_interval
    elif ok and interval is not None:
        assert new >= min(f.max_interval, max(f.min_interval, interval))


@given(f=freshness, interval=st.floats(0.0, 1e6), rand=rands)
def test_a_healthy_thread_is_due_no_later_than_its_interval_minus_the_lead(
    f: Freshness, interval: float, rand: float
) -> None:
    """The interval is a promise: jitter only brings the check forward, by at most ``jitter``."""
    delay = check_delay(f, interval, 0, rand)
    target = max(0.0, interval - f.lead)
    assert 0.0 <= delay <= target
    assert delay >= target * (1 - f.jitter) * (1 - 1e-12)


@given(f=freshness, interval=st.floats(0.01, 1e5), failures=st.integers(1, 500), rand=rands)
def test_failure_backoff_is_todays(
    f: Freshness, interval: float, failures: int, rand: float
) -> None:
    """A failing thread backs off exactly as the fixed schedule always did."""
    expected = next_delay(Cadence(interval, f.jitter, f.max_backoff), failures, rand)
    assert check_delay(f, interval, failures, rand) == expected
    assert check_delay(f, interval, failures, rand) <= max(f.max_backoff, interval) * (1 + 1e-9)


@given(interval=st.floats(0.01, 1e5), jitter=st.floats(0.0, 1.0), rand=rands)
def test_without_configured_bounds_the_schedule_is_the_fixed_one(
    interval: float, jitter: float, rand: float
) -> None:
    """promise=False (no min/max set): exactly today's ``interval +- jitter``."""
    f = Freshness(interval, interval, jitter=jitter, lead=10.0, promise=False)
    expected = next_delay(Cadence(interval, jitter, 3600.0), 0, rand)
    assert check_delay(f, interval, 0, rand) == pytest.approx(expected)


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_delay(60.0, n, 0.0, 900.0, 0.5) for n in range(1, 6)] == [
        120.0,
        240.0,
        480.0,
        900.0,
        900.0,
    ]


def test_overdue_ratio_puts_an_active_thread_before_a_long_idle_one() -> None:
    """Five seconds late on a minute beats an hour late on a day; never scheduled beats all."""
    active = overdue_ratio(1000.0, 995.0, 60.0)
    idle = overdue_ratio(1000.0, 1000.0 - 3600.0, 86400.0)
    assert active > idle
    assert overdue_ratio(1000.0, None, 60.0) == math.inf


@given(
    budget=st.floats(0.01, 1e4),
    horizon=st.floats(0.01, 600.0),
    per_pass=st.floats(0.0, 1e3),
    cap=st.integers(1, 10_000),
)
def test_claim_fits_the_budget(budget: float, horizon: float, per_pass: float, cap: int) -> None:
    """The claim's expected requests never exceed one horizon of budget (unless one thread alone
    does), and it never exceeds the batch cap."""
    n = claim_size(budget, horizon, per_pass, cap)
    assert 1 <= n <= cap
    if n > 1:
        assert n * max(per_pass, 1e-9) <= budget * horizon * (1 + 1e-9)


def test_claim_size_from_a_budget() -> None:
    assert claim_size(50.0, 5.0, 1.0, 500) == 250
    assert claim_size(50.0, 5.0, 2.5, 500) == 100
    assert claim_size(1000.0, 5.0, 1.0, 500) == 500
    assert claim_size(0.1, 5.0, 3.0, 500) == 1


def test_estimate_moves_towards_what_a_batch_saw() -> None:
    assert update_estimate(1.0, 30, 10) == pytest.approx(1.4)
    assert update_estimate(2.0, 0, 0) == 2.0
    assert update_estimate(2.0, 0, 5) == pytest.approx(1.8)  # never below one request per pass


@given(st.lists(st.floats(0.0, 1e6), max_size=300))
def test_lag_percentiles_are_order_statistics(values: list[float]) -> None:
    lag = lag_of(values)
    assert lag.threads == len(values)
    if values:
        assert min(values) <= lag.p50 <= lag.p99 <= lag.max == max(values)
        assert lag.p50 in values
        assert lag.p99 in values
    else:
        assert (lag.p50, lag.p99, lag.max) == (0.0, 0.0, 0.0)


def test_percentile_nearest_rank() -> None:
    ordered = [float(v) for v in range(1, 101)]
    assert percentile(ordered, 0.5) == 50.0
    assert percentile(ordered, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0


def test_metrics_expose_the_lag_and_the_budget() -> None:
    """/metrics: recently changed threads, staleness by quantile, the budget and the claim size."""
    from worker.daemon.metrics import DaemonMetrics  # noqa: PLC0415 - keeps the pure tests light

    metrics = DaemonMetrics()
    metrics.set_lag(lag_of([10.0, 20.0, 300.0]))
    metrics.budget.set(50.0)
    metrics.claim_size.set(250)
    body = metrics.render().decode()
    assert "threadsync_recently_changed_threads 3.0" in body
    assert 'threadsync_recent_staleness_seconds{quantile="0.5"} 20.0' in body
    assert 'threadsync_recent_staleness_seconds{quantile="0.99"} 300.0' in body
    assert 'threadsync_recent_staleness_seconds{quantile="1"} 300.0' in body
    assert "threadsync_request_budget_per_second 50.0" in body
    assert "threadsync_claim_size 250.0" in body


@given(
    rate=st.floats(0.5, 500.0),
    burst=st.integers(1, 5),
    gaps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=200),
    window=st.floats(0.01, 30.0),
)
def test_the_budget_is_never_exceeded(
    rate: float, burst: int, gaps: list[float], window: float
) -> None:
    """The daemon's one pacer (GCRA), under any arrival pattern on a fake clock: in every window
    of ``window`` seconds at most ``rate * window + burst`` requests go."""
    from worker.client.pacer import reserve  # noqa: PLC0415 - keeps the pure tests light

    interval, tolerance = 1.0 / rate, (burst - 1) / rate
    tat, now, sent = float("-inf"), 0.0, []
    for gap in gaps:
        now += gap
        slot = reserve(tat, now, interval, tolerance)
        tat = slot.tat
        sent.append(slot.at)
    sent.sort()
    j = 0
    for i, start in enumerate(sent):
        while j < len(sent) and sent[j] < start + window:
            j += 1
        assert j - i <= rate * window + burst + 1e-9


def test_settings_bounds_fall_back_to_the_sync_interval() -> None:
    """Unset: both are sync_interval (the fixed schedule); one set: the other from sync_interval;
    the budget defaults to requests_per_second; min above max is refused."""
    from pydantic import ValidationError  # noqa: PLC0415

    from worker.config import DaemonSettings  # noqa: PLC0415

    assert DaemonSettings().interval_bounds == (300.0, 300.0)
    assert DaemonSettings(min_interval=60.0).interval_bounds == (60.0, 300.0)
    assert DaemonSettings(max_interval=86400.0).interval_bounds == (300.0, 86400.0)
    assert DaemonSettings(max_interval=100.0).interval_bounds == (100.0, 100.0)
    assert DaemonSettings(min_interval=900.0).interval_bounds == (900.0, 900.0)
    assert DaemonSettings().request_budget == 20.0
    assert DaemonSettings(max_requests_per_second=50.0).request_budget == 50.0
    with pytest.raises(ValidationError, match="min_interval"):
        DaemonSettings(min_interval=600.0, max_interval=60.0)


def test_a_bad_bound_is_one_line(tmp_path: Path) -> None:
    from worker.config import load_settings  # noqa: PLC0415
    from worker.errors import ConfigError  # noqa: PLC0415

    config = tmp_path / "threadsync.toml"
    config.write_text("[daemon]\nmin_interval = 600\nmax_interval = 60\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert "\n" not in str(caught.value)
    assert "min_interval" in str(caught.value)
