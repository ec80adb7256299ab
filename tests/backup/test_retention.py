"""Retention against a reference model of restic's rules, over random sets of backup times."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.backup.retention import plan_retention

BASE = datetime(2025, 12, 20, tzinfo=UTC)


def reference(
    times: set[datetime], last: int, daily: int, weekly: int, monthly: int
) -> set[datetime]:
    """Restic, stated per rule: the newest snapshot of each of the ``n`` newest buckets, plus the
    oldest snapshot when fewer than ``n`` buckets hold the others; union over rules."""
    if not times or max(last, daily, weekly, monthly) == 0:
        return set(times)
    newest_first = sorted(times, reverse=True)
    oldest = newest_first[-1]
    rules: list[tuple[int, Callable[[datetime], object]]] = [
        (last, lambda t: t),
        (daily, lambda t: t.date()),
        (weekly, lambda t: t.isocalendar()[:2]),
        (monthly, lambda t: (t.year, t.month)),
    ]
    keep: set[datetime] = set()
    for n, key in rules:
        if n <= 0:
            continue
        newest_of: dict[object, datetime] = {}
        for t in newest_first:
            newest_of.setdefault(key(t), t)
        buckets = sorted(newest_of.values(), reverse=True)
        keep.update(buckets[:n])
        if len({key(t) for t in newest_first[:-1]}) < n:
            keep.add(oldest)
    return keep


times = st.sets(
    st.integers(min_value=0, max_value=400 * 24 * 60).map(
        lambda m: BASE - timedelta(minutes=m * 7)
    ),
    max_size=40,
)
budget = st.integers(min_value=0, max_value=6)


@settings(max_examples=200, deadline=None)
@given(times, budget, budget, budget, budget)
def test_plan_matches_the_reference_model(
    ts: set[datetime], last: int, daily: int, weekly: int, monthly: int
) -> None:
    """Every random set of times and budgets keeps exactly what the reference model keeps."""
    assert plan_retention(ts, last, daily, weekly, monthly) == reference(
        ts, last, daily, weekly, monthly
    )


@settings(max_examples=200, deadline=None)
@given(times, budget, budget, budget, budget)
def test_the_newest_backup_is_always_kept(
    ts: set[datetime], last: int, daily: int, weekly: int, monthly: int
) -> None:
    """Whatever the policy, the newest snapshot survives (retention never empties a destination)."""
    if ts:
        assert max(ts) in plan_retention(ts, last, daily, weekly, monthly)


def test_keep_daily_keeps_the_last_of_each_day() -> None:
    """Three days with two snapshots each and keep_daily=2: the evening ones of the last two days,
    and nothing of the oldest day (budget spent)."""
    days = [BASE - timedelta(days=d) for d in range(3)]
    ts = {d.replace(hour=h) for d in days for h in (8, 20)}
    assert plan_retention(ts, keep_daily=2) == {days[0].replace(hour=20), days[1].replace(hour=20)}


def test_unspent_budget_keeps_the_oldest() -> None:
    """keep_daily=5 with two days of snapshots: each day's newest plus the very oldest."""
    ts = {BASE.replace(hour=h) for h in (1, 2)} | {
        (BASE - timedelta(days=1)).replace(hour=h) for h in (1, 2)
    }
    kept = plan_retention(ts, keep_daily=5)
    assert kept == {BASE.replace(hour=2), (BASE - timedelta(days=1)).replace(hour=2), min(ts)}


def test_empty_policy_keeps_everything() -> None:
    """All budgets zero: nothing is deleted (restic refuses such a forget)."""
    ts = {BASE - timedelta(days=d) for d in range(5)}
    assert plan_retention(ts) == ts
