"""Which snapshots to keep: restic's ``forget --keep-*`` rules, as a pure function.

Snapshots are walked newest first. Each rule has a budget and a bucket function (``last``: every
snapshot is its own bucket; ``daily``: the UTC calendar day; ``weekly``: the ISO week; ``monthly``:
the calendar month). A snapshot is kept when, for some rule with budget left, it opens a new bucket
(it is the newest snapshot of its day, week, ...); keeping it spends one unit of that rule's budget.
As in restic >= 0.16, the oldest snapshot is also kept while a rule still has budget, which keeps
the longest history the budget allows. A policy whose budgets are all zero keeps everything
(restic refuses to forget with an empty policy; we never delete then either).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime

Bucket = Callable[[datetime, int], object]


def _utc(t: datetime) -> datetime:
    return t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)


def day_of(t: datetime) -> object:
    u = _utc(t)
    return (u.year, u.month, u.day)


def week_of(t: datetime) -> object:
    return _utc(t).isocalendar()[:2]


def month_of(t: datetime) -> object:
    u = _utc(t)
    return (u.year, u.month)


def plan_retention(
    times: Iterable[datetime],
    keep_last: int = 0,
    keep_daily: int = 0,
    keep_weekly: int = 0,
    keep_monthly: int = 0,
) -> set[datetime]:
    """The subset of ``times`` to keep; everything else may be deleted."""
    ordered = sorted(set(times), key=_utc, reverse=True)
    rules: list[tuple[int, Bucket]] = [
        (keep_last, lambda _t, nr: nr),
        (keep_daily, lambda t, _nr: day_of(t)),
        (keep_weekly, lambda t, _nr: week_of(t)),
        (keep_monthly, lambda t, _nr: month_of(t)),
    ]
    if all(budget <= 0 for budget, _ in rules):
        return set(ordered)
    budgets = [budget for budget, _ in rules]
    last: list[object] = [None] * len(rules)
    keep: set[datetime] = set()
    for nr, t in enumerate(ordered):
        oldest = nr == len(ordered) - 1
        for i, (_, bucket) in enumerate(rules):
            if budgets[i] <= 0:
                continue
            value = bucket(t, nr)
            if value != last[i] or oldest:
                keep.add(t)
                last[i] = value
                budgets[i] -= 1
    return keep
