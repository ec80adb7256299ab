"""Passes' closing states queued for one grouped transaction are written together: one
savepoint and one statement per shape instead of a savepoint each, with the same effect as
writing each alone (a refused guard writes nothing, a failing one fails alone)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlmodel import Session

from worker.errors import WriteRefused
from worker.store import sync_state
from worker.store.db import STORE_ERRORS, Mirror
from worker.store.repo import add_threads
from worker.sync.writer import Guard, PageWriter

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
# Text a closing state may carry (column_text has already made it storable): quotes, a
# placeholder psycopg would read in SQL (never in a parameter), backslashes, emoji, RTL marks.
HOSTILE = 'it\'s "quoted" %s %(x)s \\N; DROP TABLE sync_state; -- \U0001f600 \u202e\ufffd'


def _writer(mirror: Mirror, thread_id: str, guard: Guard | None = None) -> PageWriter:
    return PageWriter(mirror, thread_id, ties=lambda: "reverse", now=lambda: NOW, guard=guard)


def _ok(at: datetime) -> dict[str, Any]:
    return {"last_sync_at": at, "last_success_at": at, "consecutive_failures": 0,
            "last_error": None, "last_error_kind": None, "parked_until": None}  # fmt: skip


def _failed(at: datetime, error: str) -> dict[str, Any]:
    return {"last_sync_at": at, "last_error": error, "last_error_kind": "failed",
            "parked_until": at + timedelta(hours=1)}  # fmt: skip


def _adds(added: int, failures: int = 0) -> dict[str, int]:
    adds = {"added": added, "changed": 0, "deleted": 0, "restored": 0}
    if failures:
        adds["consecutive_failures"] = failures
    return adds


def _states(mirror: Mirror, *ids: str) -> dict[str, tuple[Any, ...]]:
    with mirror.read() as session:
        rows = session.execute(
            text(
                "SELECT thread_id, added, consecutive_failures, last_error, last_error_kind,"
                " last_success_at IS NOT NULL, parked_until IS NOT NULL, pages FROM sync_state"
            )
        ).all()
    return {r[0]: tuple(r[1:]) for r in rows if r[0] in ids}


def _savepoints(mirror: Mirror) -> list[str]:
    seen: list[str] = []

    def grab(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.upper().startswith("SAVEPOINT"):
            seen.append(statement)

    event.listen(mirror.engine, "before_cursor_execute", grab)
    return seen


def _track(mirror: Mirror, ids: list[str]) -> None:
    with mirror.write() as session:
        add_threads(session, ids)


async def test_closing_states_queued_together_share_one_savepoint(mirror: Mirror) -> None:
    """Six passes' closing states (two shapes, hostile error text) ride one transaction: each
    row as its own UPDATE would leave it, and one savepoint for all of them."""
    ids = [f"thread_{i}" for i in range(6)]
    _track(mirror, ids)
    savepoints = _savepoints(mirror)
    for i, thread_id in enumerate(ids):
        writer = _writer(mirror, thread_id)
        if i % 3 == 2:
            writer.close(_failed(NOW, HOSTILE), _adds(0, failures=1))
        else:
            writer.close(_ok(NOW), _adds(i))
    assert mirror.grouped_waiting == 6
    await mirror.flush_grouped()
    assert len(savepoints) == 1
    states = _states(mirror, *ids)
    for i, thread_id in enumerate(ids):
        if i % 3 == 2:
            assert states[thread_id] == (0, 1, HOSTILE, "failed", False, True, 0)
        else:
            assert states[thread_id] == (i, 0, None, None, True, False, 0)


async def test_a_lease_lost_in_the_middle_of_a_group_writes_nothing_of_that_pass(
    mirror: Mirror,
) -> None:
    """The second of three closing states is refused by its guard (the lease was lost): the
    other two are written, it is not, and the flush raises nothing (the new holder writes it)."""
    ids = ["thread_a", "thread_b", "thread_c"]
    _track(mirror, ids)
    asked: list[str] = []

    def guard(thread_id: str, refuse: bool) -> Callable[[Session], None]:
        def check(session: Session) -> None:
            asked.append(thread_id)
            assert session.in_transaction()
            if refuse:
                raise WriteRefused(f"{thread_id}: the lease was lost")

        return check

    for thread_id in ids:
        _writer(mirror, thread_id, guard(thread_id, thread_id == "thread_b")).close(
            _ok(NOW), _adds(5)
        )
    await mirror.flush_grouped()
    assert asked == ids  # each guard once, in queue order
    states = _states(mirror, *ids)
    assert states["thread_a"] == states["thread_c"] == (5, 0, None, None, True, False, 0)
    assert states["thread_b"] == (0, 0, None, None, False, False, 0)  # as it was


class Broken(Exception):
    """A guard that fails for a reason of its own (not a refusal)."""


async def test_a_guard_failing_in_a_group_fails_its_pass_alone(mirror: Mirror) -> None:
    """A guard raising something other than a refusal: the others are still written, the flush
    raises its error, and that guard was asked once."""
    ids = ["thread_a", "thread_b", "thread_c"]
    _track(mirror, ids)
    asked: list[str] = []

    def broken(session: Session) -> None:
        asked.append("thread_b")
        raise Broken("the check itself failed")

    _writer(mirror, "thread_a").close(_ok(NOW), _adds(1))
    _writer(mirror, "thread_b", broken).close(_ok(NOW), _adds(2))
    _writer(mirror, "thread_c").close(_ok(NOW), _adds(3))
    with pytest.raises(Broken):
        await mirror.flush_grouped()
    assert asked == ["thread_b"]
    states = _states(mirror, *ids)
    assert (states["thread_a"][0], states["thread_b"][0], states["thread_c"][0]) == (1, 0, 3)


async def test_a_statement_the_database_refuses_fails_that_pass_alone(mirror: Mirror) -> None:
    """One closing state the database refuses (a count that does not fit the column): the
    batch rolls back and each is written alone, so the others land and the flush raises."""
    ids = ["thread_a", "thread_b", "thread_c"]
    _track(mirror, ids)
    _writer(mirror, "thread_a").close(_ok(NOW), _adds(1))
    _writer(mirror, "thread_b").close(_ok(NOW), _adds(2**70))  # beyond any integer column
    _writer(mirror, "thread_c").close(_ok(NOW), _adds(3))
    with pytest.raises((OverflowError, *STORE_ERRORS)):  # sqlite3 refuses to bind it
        await mirror.flush_grouped()
    states = _states(mirror, *ids)
    assert (states["thread_a"][0], states["thread_b"][0], states["thread_c"][0]) == (1, 0, 3)


def test_close_many_writes_a_thread_met_twice_in_order(mirror: Mirror) -> None:
    """The same thread twice among others: its counters add up and its later columns win, as
    two UPDATEs one after the other would leave them; unknown columns are refused first."""
    ids = ["thread_a", "thread_b"]
    _track(mirror, ids)
    later = NOW + timedelta(minutes=1)
    with mirror.write() as session:
        sync_state.close_many(
            session,
            [
                ("thread_a", _failed(NOW, "first"), _adds(1, failures=1)),
                ("thread_b", _ok(NOW), _adds(7)),
                ("thread_a", _failed(later, HOSTILE), _adds(2, failures=1)),
                ("thread_b", {"pages": 4}, {}),
            ],
        )
    states = _states(mirror, *ids)
    assert states["thread_a"] == (3, 2, HOSTILE, "failed", False, True, 0)
    assert states["thread_b"] == (7, 0, None, None, True, False, 4)
    with mirror.write() as session, pytest.raises(ValueError, match="not sync_state columns"):
        sync_state.close_many(
            session, [("thread_a", _ok(NOW), {}), ("thread_b", {"thread_id": "x"}, {})]
        )
    assert _states(mirror, *ids) == states  # nothing written: refused before any statement
