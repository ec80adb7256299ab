"""``among``: the per-batch reads' id filter (an IN list, on PostgreSQL one array parameter)
selects exactly the ids given, whatever they hold."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlmodel import col, select

from worker.store import sync_state
from worker.store.db import Mirror
from worker.store.messages import among
from worker.store.models import TrackedThread
from worker.store.repo import Standing, add_threads, mark_gone, standings

# What an array literal or a quoted list would take apart: commas, braces, quotes, backslashes,
# the word NULL, spaces, percent signs and non-ASCII.
HOSTILE = [
    "thread_a,b",
    "thread_{c}",
    'thread_"d"',
    "thread_e\\f",
    "NULL",
    "thread_ g ",
    "thread_%s",
    "thread_ü",
]


def test_among_selects_exactly_the_ids_given(mirror: Mirror) -> None:
    others = [f"thread_{n}" for n in range(120)]
    with mirror.write() as session:
        add_threads(session, [*HOSTILE, *others])
    asked = [*HOSTILE, *others[:60], "thread_not_tracked"]
    with mirror.read() as session:
        query = select(col(TrackedThread.thread_id)).where(
            among(session, col(TrackedThread.thread_id), asked)
        )
        found = set(session.execute(query).scalars())
        assert found == set(HOSTILE) | set(others[:60])
        none = select(col(TrackedThread.thread_id)).where(
            among(session, col(TrackedThread.thread_id), [])
        )
        assert list(session.execute(none)) == []
        assert set(sync_state.of_threads(session, HOSTILE)) == set(HOSTILE)


def test_standings_read_the_state_and_when_gone(mirror: Mirror) -> None:
    when = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    with mirror.write() as session:
        add_threads(session, ["thread_live", "thread_gone"])
        mark_gone(session, "thread_gone", when)
    with mirror.read() as session:
        got = standings(session, ["thread_live", "thread_gone", "thread_unknown"])
    assert set(got) == {"thread_live", "thread_gone"}
    assert got["thread_live"] == Standing("active", None)
    gone = got["thread_gone"]
    assert gone.state == "gone"
    assert gone.gone_at is not None
    assert gone.gone_at.replace(tzinfo=UTC) == when  # SQLite hands it back naive
