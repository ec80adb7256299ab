"""The adaptive schedule in the mirror: claim order by overdue ratio, the adaptive reschedule and
the lag query, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from worker.daemon.due import Cadence, Checked, aware, claim_leases, reschedule
from worker.daemon.freshness import Freshness
from worker.daemon.lag import recent_lag
from worker.store.db import Mirror
from worker.store.models import SyncState, TrackedThread
from worker.store.repo import add_threads

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
CADENCE = Cadence(interval=300.0, jitter=0.1, max_backoff=3600.0)
F = Freshness(min_interval=60.0, max_interval=3600.0, stretch=2.0, jitter=0.0, lead=0.0)


def _track(mirror: Mirror, **schedule: tuple[float | None, float | None]) -> None:
    """thread id -> (seconds overdue or None for never scheduled, check_interval)."""
    with mirror.write() as session:
        add_threads(session, list(schedule))
    with mirror.write() as session:
        for thread_id, (late, interval) in schedule.items():
            row = session.get(TrackedThread, thread_id)
            assert row is not None
            row.next_sync_at = None if late is None else NOW - timedelta(seconds=late)
            row.check_interval = interval


def _claim(mirror: Mirror, limit: int = 100) -> list[str]:
    with mirror.write() as session:
        claimed = claim_leases(
            session, now=NOW, owner="me", lease=60.0, limit=limit, default_interval=60.0
        )
    return list(claimed.epochs)


def test_claim_takes_the_most_overdue_relative_to_its_interval_first(mirror: Mirror) -> None:
    """Never scheduled first; then by (now - due) / interval, not by how long ago it fell due."""
    _track(
        mirror,
        thread_day_hour=(3600.0, 86400.0),  # 0.042
        thread_minute_5s=(5.0, 60.0),  # 0.083
        thread_day_3h=(10800.0, 86400.0),  # 0.125
        thread_new=(None, None),
        thread_unknown_3s=(3.0, None),  # never checked: the default interval (60 s) -> 0.05
        thread_future=(-10.0, 60.0),  # not due
    )
    assert _claim(mirror, limit=2) == ["thread_new", "thread_day_3h"]
    assert _claim(mirror) == ["thread_minute_5s", "thread_unknown_3s", "thread_day_hour"]


def test_adaptive_reschedule_stores_interval_and_times(mirror: Mirror) -> None:
    """Changed: back to the minimum; idle: doubled; failed: kept, with the failure backoff."""
    _track(
        mirror,
        thread_changed=(0.0, 480.0),
        thread_idle=(0.0, 480.0),
        thread_failed=(0.0, 480.0),
    )
    _claim(mirror)
    with mirror.write() as session:
        state = session.get(SyncState, "thread_failed")
        assert state is not None
        state.consecutive_failures = 1
    at = NOW + timedelta(seconds=7)
    checked = {
        "thread_changed": Checked(changed=True, ok=True, at=at),
        "thread_idle": Checked(changed=False, ok=True, at=at),
        "thread_failed": Checked(changed=False, ok=False, at=at),
    }
    with mirror.write() as session:
        plan = reschedule(
            session,
            list(checked),
            now=NOW + timedelta(seconds=9),
            cadence=CADENCE,
            rand={},
            freshness=F,
            checked=checked,
        )
    assert plan == {
        "thread_changed": at + timedelta(seconds=60),
        "thread_idle": at + timedelta(seconds=960),
        "thread_failed": at + timedelta(seconds=960),  # 480 * 2**1, jitter 0
    }
    with mirror.read() as session:
        rows = {t: session.get(TrackedThread, t) for t in plan}
    changed, idle, failed = rows["thread_changed"], rows["thread_idle"], rows["thread_failed"]
    assert changed is not None
    assert idle is not None
    assert failed is not None
    assert (changed.check_interval, idle.check_interval, failed.check_interval) == (
        60.0,
        960.0,
        480.0,
    )
    assert aware(changed.last_changed_at) == at
    assert aware(changed.last_checked_at) == at
    assert idle.last_changed_at is None
    assert aware(idle.last_checked_at) == at
    assert failed.last_checked_at is None
    assert all(r is not None and r.lease_owner is None for r in rows.values())


def test_lag_counts_only_threads_changed_in_the_last_hour(mirror: Mirror) -> None:
    """Staleness = now - last successful check, over active threads changed within the hour."""
    _track(mirror, thread_a=(0.0, 60.0), thread_b=(0.0, 60.0), thread_c=(0.0, 60.0))
    with mirror.write() as session:
        for thread_id, changed_ago, checked_ago in (
            ("thread_a", 600.0, 30.0),
            ("thread_b", 120.0, 90.0),
            ("thread_c", 7200.0, 10.0),  # changed two hours ago: not recently active
        ):
            row = session.get(TrackedThread, thread_id)
            assert row is not None
            row.last_changed_at = NOW - timedelta(seconds=changed_ago)
            row.last_checked_at = NOW - timedelta(seconds=checked_ago)
    with mirror.read() as session:
        lag = recent_lag(session, NOW)
    assert lag.threads == 2
    assert lag.p50 == 30.0
    assert lag.p99 == 90.0
    assert lag.max == 90.0


def test_a_thread_changed_within_the_hold_stays_at_the_minimum(mirror: Mirror) -> None:
    """The reschedule reads last_changed_at: changed 10 min before an idle pass, hold 1 h: 60 s."""
    _track(mirror, thread_recent=(0.0, 60.0), thread_old=(0.0, 60.0))
    with mirror.write() as session:
        for thread_id, ago in (("thread_recent", 600.0), ("thread_old", 7200.0)):
            row = session.get(TrackedThread, thread_id)
            assert row is not None
            row.last_changed_at = NOW - timedelta(seconds=ago)
    checked = {t: Checked(changed=False, ok=True, at=NOW) for t in ("thread_recent", "thread_old")}
    held = Freshness(60.0, 3600.0, stretch=2.0, jitter=0.0, hold=3600.0)
    with mirror.write() as session:
        plan = reschedule(
            session,
            list(checked),
            now=NOW,
            cadence=CADENCE,
            rand={},
            freshness=held,
            checked=checked,
        )
    assert plan == {
        "thread_recent": NOW + timedelta(seconds=60),
        "thread_old": NOW + timedelta(seconds=120),
    }
