"""Due-time maths and the batched claim / reschedule / release queries, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.daemon.due import (
    Cadence,
    aware,
    claim_leases,
    clear_leases,
    due_count,
    next_delay,
    release,
    reschedule,
    threads_by_state,
)
from worker.store.db import Mirror
from worker.store.models import SyncState, TrackedThread
from worker.store.repo import add_threads, remove_threads

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
CADENCE = Cadence(interval=300.0, jitter=0.1, max_backoff=3600.0)


def test_healthy_thread_comes_back_after_the_interval_within_the_jitter() -> None:
    """No failures: interval * (1 +- jitter), the extremes reached at rand 0 and ~1."""
    assert next_delay(CADENCE, 0, 0.5) == pytest.approx(300.0)
    assert next_delay(CADENCE, 0, 0.0) == pytest.approx(270.0)
    assert next_delay(CADENCE, 0, 0.999999) == pytest.approx(330.0, rel=1e-4)


def test_failures_double_the_wait_up_to_the_cap() -> None:
    """Each consecutive failure doubles the base; the cap holds whatever the count."""
    assert [next_delay(CADENCE, f, 0.5) for f in range(1, 6)] == [
        600.0,
        1200.0,
        2400.0,
        3600.0,
        3600.0,
    ]
    assert next_delay(CADENCE, 10_000, 0.5) == 3600.0


@given(
    interval=st.floats(0.01, 1e5),
    jitter=st.floats(0.0, 1.0),
    cap=st.floats(0.01, 1e6),
    failures=st.integers(0, 200),
    rand=st.floats(0.0, 1.0, exclude_max=True),
)
def test_delay_is_bounded_for_any_input(
    interval: float, jitter: float, cap: float, failures: int, rand: float
) -> None:
    """Never negative; a failing thread never waits past max(cap, interval); a healthy one past
    interval * (1 + jitter)."""
    cadence = Cadence(interval, jitter, cap)
    delay = next_delay(cadence, failures, rand)
    assert delay >= 0.0
    if failures:
        assert delay <= max(cap, interval) * (1 + 1e-9)
    else:
        assert delay <= interval * (1 + jitter) * (1 + 1e-9)


def _track(mirror: Mirror, *ids: str) -> None:
    with mirror.write() as session:
        add_threads(session, ids)


def _claim(mirror: Mirror, now: datetime = NOW, *, limit: int = 100, **kw: Any) -> list[str]:
    with mirror.write() as session:
        claimed = claim_leases(session, now=now, owner="me", lease=60.0, limit=limit, **kw)
    return list(claimed.epochs)


def test_new_threads_are_due_at_once_and_a_claim_leases_them(mirror: Mirror) -> None:
    """Never-synced threads (next_sync_at NULL) are due; once claimed they are not claimed twice."""
    _track(mirror, "thread_a", "thread_b", "thread_c")
    assert _claim(mirror, limit=2) == ["thread_a", "thread_b"]
    assert _claim(mirror) == ["thread_c"]
    assert _claim(mirror) == []
    with mirror.read() as session:
        row = session.get(TrackedThread, "thread_a")
        assert row is not None
        assert row.lease_owner == "me"
        assert aware(row.lease_until) == NOW + timedelta(seconds=60)
    # An expired lease (a crashed owner) makes the thread claimable again.
    assert len(_claim(mirror, now=NOW + timedelta(seconds=61))) == 3


def test_reschedule_sets_next_time_from_failures_and_parking(mirror: Mirror) -> None:
    """Healthy: interval; failing twice: 4x interval; parked: not before parked_until."""
    _track(mirror, "thread_ok", "thread_bad", "thread_parked")
    _claim(mirror)
    with mirror.write() as session:
        bad = session.get(SyncState, "thread_bad")
        parked = session.get(SyncState, "thread_parked")
        assert bad is not None
        assert parked is not None
        bad.consecutive_failures = 2
        parked.consecutive_failures = 1
        parked.parked_until = NOW + timedelta(hours=5)
    with mirror.write() as session:
        plan = reschedule(
            session,
            ["thread_ok", "thread_bad", "thread_parked"],
            now=NOW,
            cadence=CADENCE,
            rand={},
        )
    assert plan == {
        "thread_ok": NOW + timedelta(seconds=300),
        "thread_bad": NOW + timedelta(seconds=1200),
        "thread_parked": NOW + timedelta(hours=5),
    }
    with mirror.read() as session:
        rows = {t: session.get(TrackedThread, t) for t in plan}
        for thread_id, row in rows.items():
            assert row is not None
            assert aware(row.next_sync_at) == plan[thread_id]
            assert row.lease_owner is None
        assert due_count(session, NOW + timedelta(seconds=301)) == 1
    assert _claim(mirror, now=NOW + timedelta(seconds=301)) == ["thread_ok"]
    # Parked threads are not claimed even when next_sync_at is forced into the past (thread_ok's
    # lease from the claim above has expired by then, so it comes back, most overdue first).
    with mirror.write() as session:
        row = session.get(TrackedThread, "thread_parked")
        assert row is not None
        row.next_sync_at = None
    assert _claim(mirror, now=NOW + timedelta(hours=1)) == ["thread_ok", "thread_bad"]


def test_release_keeps_the_thread_due_and_clear_drops_every_lease(mirror: Mirror) -> None:
    """A released (unfinished) thread is claimable at once; clear_leases frees a crashed owner's."""
    _track(mirror, "thread_a", "thread_b")
    _claim(mirror)
    with mirror.write() as session:
        release(session, ["thread_a"], "someone-else")  # only the owner's leases are released
    assert _claim(mirror) == []
    with mirror.write() as session:
        release(session, ["thread_a"], "me")
    assert _claim(mirror) == ["thread_a"]
    with mirror.write() as session:
        assert clear_leases(session) == 2
    assert _claim(mirror) == ["thread_a", "thread_b"]


def test_full_claim_walks_every_active_thread_by_keyset(mirror: Mirror) -> None:
    """The reconcile's claim ignores next times, skips paused threads and pages by id."""
    _track(mirror, "thread_1", "thread_2", "thread_3", "thread_4")
    with mirror.write() as session:
        remove_threads(session, ["thread_3"])
        row = session.get(TrackedThread, "thread_2")
        assert row is not None
        row.next_sync_at = NOW + timedelta(days=1)
    first = _claim(mirror, limit=2, due_only=False)
    second = _claim(mirror, limit=2, due_only=False, after=first[-1])
    assert first == ["thread_1", "thread_2"]
    assert second == ["thread_4"]


def test_threads_by_state_counts_every_fixed_label(mirror: Mirror) -> None:
    """The gauge's labels are fixed; parked / failing / never_synced are subsets of active."""
    _track(mirror, "thread_a", "thread_b", "thread_c")
    with mirror.write() as session:
        remove_threads(session, ["thread_c"])
        st_a = session.get(SyncState, "thread_a")
        assert st_a is not None
        st_a.consecutive_failures = 1
        st_a.parked_until = NOW + timedelta(minutes=1)
        st_a.last_sync_at = NOW
    with mirror.read() as session:
        counts = threads_by_state(session, NOW)
    assert counts == {
        "active": 2,
        "paused": 1,
        "gone": 0,
        "parked": 1,
        "failing": 1,
        "never_synced": 1,
    }


def test_a_gone_thread_is_claimed_again_only_for_its_recheck(mirror: Mirror) -> None:
    """Gone: rescheduled a re-check interval on, then claimed by a dispatch (not a reconcile)."""
    _track(mirror, "thread_ok", "thread_gone")
    _claim(mirror)
    with mirror.write() as session:
        row = session.get(TrackedThread, "thread_gone")
        assert row is not None
        row.state, row.gone_at = "gone", NOW
    with mirror.write() as session:
        plan = reschedule(
            session,
            ["thread_ok", "thread_gone"],
            now=NOW,
            cadence=CADENCE,
            rand={},
            gone_recheck=86400.0,
        )
    assert plan["thread_gone"] == NOW + timedelta(days=1)
    assert _claim(mirror, now=NOW + timedelta(hours=1)) == ["thread_ok"]
    assert _claim(mirror, now=NOW + timedelta(days=1), due_only=False) == ["thread_ok"]
    assert _claim(mirror, now=NOW + timedelta(days=1)) == ["thread_gone"]
