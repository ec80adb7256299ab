"""track_many / pause_many, the bulk paths under `threads add|remove` and discovery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import DateTime
from sqlalchemy.dialects import sqlite

from worker.store.db import Mirror
from worker.store.models import SyncState, TrackedThread
from worker.store.repo import (
    add_threads,
    pause_many,
    sqlite_time,
    thread_statuses,
    track_many,
    tracking_states,
)


def test_sqlite_time_is_what_sqlalchemy_stores() -> None:
    dialect = sqlite.dialect()
    process = DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
    assert process is not None
    for stamp in (
        datetime(2026, 12, 6, 8, 44, 31, 444015, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),  # no microseconds: still six digits
        datetime(999, 1, 1, tzinfo=UTC),
    ):
        assert sqlite_time(stamp) == process(stamp)
    east = datetime(2026, 12, 6, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    assert sqlite_time(east) == "2026-12-06 08:00:00.000000"


def test_bulk_rows_read_back_like_orm_rows_and_keep_their_order(mirror: Mirror) -> None:
    """Rows the bulk path writes are the ORM's rows: same types and defaults, a sync state
    each, and ordered after the threads added before them, in the order given."""
    with mirror.write() as session:
        add_threads(session, ["thread_orm"])
    ids = [f"thread_{n:05d}" for n in range(3000, 0, -1)]  # above the scan threshold
    with mirror.write() as session:
        done = track_many(session, ids)
    assert done.added == ids
    with mirror.read() as session:
        orm = session.get(TrackedThread, "thread_orm")
        bulk = session.get(TrackedThread, ids[0])
        state = session.get(SyncState, ids[-1])
        assert orm is not None
        assert bulk is not None
        assert state is not None
        assert isinstance(bulk.added_at, datetime)
        assert type(bulk.added_at) is type(orm.added_at)
        assert bulk.added_at >= orm.added_at
        assert (state.initial_done, state.pages, state.consecutive_failures) == (False, 0, 0)
        assert (state.added, state.changed, state.deleted, state.restored) == (0, 0, 0, 0)
        order = [s.thread_id for s in thread_statuses(session)]
    assert order == ["thread_orm", *ids]


def test_track_many_counts_and_reactivates_only_when_asked(mirror: Mirror) -> None:
    with mirror.write() as session:
        track_many(session, ["thread_a", "thread_b", "thread_c"])
        pause_many(session, ["thread_b"])
    with mirror.write() as session:
        kept = track_many(session, ["thread_a", "thread_b", "thread_d"], reactivate=False)
    assert (kept.added, kept.reactivated, kept.already) == (
        ["thread_d"],
        [],
        ["thread_a", "thread_b"],
    )
    with mirror.write() as session:
        back = track_many(session, ["thread_b", "thread_e"])
    assert (back.added, back.reactivated, back.already) == (["thread_e"], ["thread_b"], [])
    with mirror.read() as session:
        states = tracking_states(session, ["thread_a", "thread_b", "thread_x"])
    assert states == {"thread_a": "active", "thread_b": "active"}


def test_pause_many_counts_each_kind(mirror: Mirror) -> None:
    with mirror.write() as session:
        track_many(session, ["thread_a", "thread_b"])
        pause_many(session, ["thread_b"])
    with mirror.write() as session:
        done = pause_many(session, ["thread_a", "thread_b", "thread_z"])
    assert (done.paused, done.already, done.untracked) == (["thread_a"], ["thread_b"], ["thread_z"])
