"""Hostile or malformed pages (issue 16, point 7), on SQLite and PostgreSQL.

The emulator serves them through its fault rules (``malform``, ``duplicate``, ``relist``), as it
would over HTTP. What must hold: a message listed twice is one row (the later copy wins, one
warning) and never looks like a lost cursor; a malformed message fails its thread's pass with a
message naming the field and the message id, changes nothing already mirrored, and stops no other
thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from hashlib import sha256
from typing import Any

import orjson
import pytest
from sqlalchemy import text
from structlog.testing import capture_logs

from tests.sync.test_sync import exported, seeded, sync, track, truth
from worker.emulator import Emulator, FaultRule, ManualClock
from worker.store.db import Mirror
from worker.store.models import SyncState

pytestmark = pytest.mark.anyio

SECRET = "the conversation itself"


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(clock=ManualClock(), seed=7)


def fingerprint(mirror: Mirror, thread_id: str | None = None) -> str:
    """Every stored message row (of ``thread_id``), as a hash: equal before and after means
    nothing changed."""
    where = "" if thread_id is None else " WHERE thread_id = :t"
    with mirror.read() as session:
        rows = session.execute(
            text(
                "SELECT id, thread_id, created_at, tie_rank, role, status, run_id, assistant_id,"
                f" raw, digest, deleted_at FROM message{where} ORDER BY id"
            ),
            {"t": thread_id},
        ).all()
    return sha256(orjson.dumps([[str(v) for v in row] for row in rows])).hexdigest()


def warnings_about(logs: Sequence[Mapping[str, Any]], message_id: str) -> list[Mapping[str, Any]]:
    return [
        e
        for e in logs
        if e["log_level"] == "warning"
        and e["event"].endswith("duplicate_message")
        and e["message"] == message_id
    ]


def ids_of(rows: list[Any]) -> list[str]:
    return [r["id"] for r in rows]


def last_error(mirror: Mirror, thread_id: str) -> str | None:
    with mirror.read() as session:
        state = session.get(SyncState, thread_id)
        assert state is not None
        return state.last_error


# -- duplicates ------------------------------------------------------------------------------------


async def test_a_first_sync_page_listing_one_id_twice_keeps_the_later_copy(
    emulator: Emulator, mirror: Mirror
) -> None:
    """Was an IntegrityError traceback: now one row, holding the later copy, and one warning."""
    (thread_id,) = seeded(emulator, mirror, seed=1, threads=1, messages=30)
    newest = truth(emulator, thread_id)[-1]["id"]  # a first sync's first item
    emulator.add_fault(
        FaultRule("duplicate", route="list", index=0, fields={"metadata": {"copy": "later"}})
    )
    with capture_logs() as logs:
        report = await sync(emulator, mirror)
    assert report.ok, report.failed
    rows = exported(mirror, thread_id)
    assert ids_of(rows) == ids_of(truth(emulator, thread_id))
    assert [r["metadata"] for r in rows if r["id"] == newest] == [{"copy": "later"}]
    assert len(warnings_about(logs, newest)) == 1
    assert report.outcomes[0].rescans == 0


async def test_a_synced_threads_page_listing_one_id_twice_is_no_lost_cursor(
    emulator: Emulator, mirror: Mirror
) -> None:
    """An ordinary pass whose forward page lists a new message twice: stored once, no rescan."""
    (thread_id,) = seeded(emulator, mirror, seed=1, threads=1, messages=30)
    assert (await sync(emulator, mirror)).ok
    emulator.advance_clock(5)
    emulator.append_messages(thread_id, n=5)
    emulator.add_fault(FaultRule("duplicate", times=None, route="list", index=1))
    with capture_logs() as logs:
        report = await sync(emulator, mirror)
    emulator.clear_faults()
    assert report.ok, report.failed
    assert report.outcomes[0].rescans == 0
    assert report.counts.added == 5
    assert exported(mirror, thread_id) == truth(emulator, thread_id)
    assert any(e["event"] == "api.duplicate_message" for e in logs)


@pytest.mark.parametrize("full", [False, True])
async def test_a_page_relisting_the_previous_pages_last_message_is_no_lost_cursor(
    emulator: Emulator, mirror: Mirror, full: bool
) -> None:
    """A server whose cursor is inclusive lists each page's last message again on the next
    page: a duplicate across pages. One row each, one warning each, and no rescan."""
    (thread_id,) = seeded(emulator, mirror, seed=1, threads=1, messages=250)
    emulator.add_fault(FaultRule("relist", times=None, route="list"))
    with capture_logs() as logs:
        report = await sync(emulator, mirror, full=full)
    assert report.ok, report.failed
    assert exported(mirror, thread_id) == truth(emulator, thread_id)
    # A first sync walks 3 pages newest-first (two seams); with --full, a reconcile walks the
    # thread oldest-first again (two more seams).
    relisted = [e for e in logs if e["event"] == "sync.duplicate_message"]
    assert len(relisted) == (4 if full else 2)
    assert all(len(warnings_about(logs, e["message"])) == 1 for e in relisted)
    assert report.outcomes[0].rescans == (1 if full else 0)  # --full's own walk, no restart
    assert not any(e["event"] == "sync.rescan_restart" for e in logs)


async def test_a_changed_copy_on_a_later_page_wins(emulator: Emulator, mirror: Mirror) -> None:
    """Across pages the later copy wins too: each relisted message is stored as relisted."""
    (thread_id,) = seeded(emulator, mirror, seed=1, threads=1, messages=250)
    later = {"metadata": {"copy": "later"}}
    emulator.add_fault(FaultRule("relist", times=None, route="list", fields=later))
    with capture_logs() as logs:
        report = await sync(emulator, mirror)
    assert report.ok, report.failed
    relisted = {e["message"] for e in logs if e["event"] == "sync.duplicate_message"}
    assert len(relisted) == 2
    rows = exported(mirror, thread_id)
    expected = [{**m, **later} if m["id"] in relisted else m for m in truth(emulator, thread_id)]
    assert rows == expected


async def test_an_ordinary_pass_whose_page_starts_with_the_cursor_again_is_no_lost_cursor(
    emulator: Emulator, mirror: Mirror
) -> None:
    """The forward walk from the high-water mark, answered with that message first again."""
    (thread_id,) = seeded(emulator, mirror, seed=1, threads=1, messages=30)
    assert (await sync(emulator, mirror)).ok
    emulator.advance_clock(5)
    emulator.append_messages(thread_id, n=3)
    emulator.add_fault(FaultRule("relist", times=None, route="list"))
    report = await sync(emulator, mirror)
    emulator.clear_faults()
    assert report.ok, report.failed
    assert report.outcomes[0].rescans == 0
    assert report.counts.added == 3
    assert exported(mirror, thread_id) == truth(emulator, thread_id)


# -- malformed objects -----------------------------------------------------------------------------

# (what the fault does to the message, the field the error must name)
SHAPES: dict[str, tuple[dict[str, Any], str]] = {
    "content a string": ({"fields": {"content": SECRET}}, "content"),
    "metadata a list": ({"fields": {"metadata": [SECRET]}}, "metadata"),
    "metadata values not strings": ({"fields": {"metadata": {"n": 1, "x": [SECRET]}}}, "metadata"),
    "thread_id of another thread": ({"fields": {"thread_id": "thread_other"}}, "thread_id"),
    "id missing": ({"drop": ["id"]}, "id"),
    "created_at missing": ({"drop": ["created_at"]}, "created_at"),
    "object wrong": ({"fields": {"object": "thread.run"}}, "object"),
    "role unknown": ({"fields": {"role": "system"}}, "role"),
    "part not an object": ({"fields": {"content": [SECRET]}}, "content[0]"),
}


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_malformed_message_fails_its_thread_and_changes_nothing(
    emulator: Emulator, mirror: Mirror, shape: str
) -> None:
    """A reconcile meets a malformed object that would overwrite a good row: the pass fails
    naming the field and the message, the mirror is unchanged, the other thread syncs."""
    bad, good = seeded(emulator, mirror, seed=1, threads=2, messages=30)
    assert (await sync(emulator, mirror)).ok
    before, good_before = fingerprint(mirror, bad), exported(mirror, good)
    emulator.advance_clock(5)
    emulator.append_messages(good, n=2)
    change, field = SHAPES[shape]
    emulator.add_fault(FaultRule("malform", times=None, route="list", thread_id=bad, index=2,
                                 **change))  # fmt: skip
    report = await sync(emulator, mirror, full=True)
    outcomes = {o.thread_id: o for o in report.outcomes}
    assert outcomes[bad].result == "failed"
    assert outcomes[good].result == "synced"
    error = outcomes[bad].error or ""
    assert f"is malformed: {field} " in error
    assert "item 2 of a page" in error
    named = [m["id"] for m in truth(emulator, bad) if m["id"] in error]
    assert len(named) == (0 if field == "id" else 1)
    assert SECRET not in error
    assert last_error(mirror, bad) == error
    assert outcomes[bad].requests == 1  # not retried: the same request gets the same answer
    assert fingerprint(mirror, bad) == before
    assert exported(mirror, good) == truth(emulator, good)
    assert exported(mirror, good)[:30] == good_before


@pytest.mark.parametrize("shape", ["content a string", "thread_id of another thread"])
async def test_a_malformed_message_on_a_first_sync_stores_nothing(
    emulator: Emulator, mirror: Mirror, shape: str
) -> None:
    (bad,) = seeded(emulator, mirror, seed=1, threads=1, messages=30)
    before = fingerprint(mirror)
    change, field = SHAPES[shape]
    emulator.add_fault(FaultRule("malform", times=None, route="list", index=5, **change))
    report = await sync(emulator, mirror)
    assert not report.ok
    assert f"is malformed: {field} " in (report.outcomes[0].error or "")
    assert fingerprint(mirror) == before
    emulator.clear_faults()
    report = await sync(emulator, mirror)  # the server mends its ways: the thread converges
    assert report.ok
    assert exported(mirror, bad) == truth(emulator, bad)


async def test_a_malformed_probe_fails_an_ordinary_pass(emulator: Emulator, mirror: Mirror) -> None:
    """The newest message, answered as another thread's, in an ordinary pass's probe."""
    seeded(emulator, mirror, seed=1, threads=1, messages=30)
    assert (await sync(emulator, mirror)).ok
    before = fingerprint(mirror)
    emulator.add_fault(
        FaultRule("malform", route="list", index=0, fields={"thread_id": "thread_other"})
    )
    report = await sync(emulator, mirror)
    assert not report.ok
    assert "thread_id names thread thread_other" in (report.outcomes[0].error or "")
    assert fingerprint(mirror) == before


async def test_a_malformed_refetch_of_an_in_progress_message_fails_the_pass(
    emulator: Emulator, mirror: Mirror
) -> None:
    """A message stored in progress is fetched again: that answer is checked like a page."""
    (thread_id,) = emulator.seed(seed=9, threads=1, messages=5)
    emulator.advance_clock(2)
    emulator.append_messages(
        thread_id, messages=[{"role": "assistant", "content": "partial", "status": "in_progress"}]
    )
    track(mirror, thread_id)
    assert (await sync(emulator, mirror)).ok
    before = fingerprint(mirror)
    emulator.add_fault(FaultRule("malform", route="get", fields={"metadata": [1]}))
    report = await sync(emulator, mirror)
    assert not report.ok
    assert "metadata is a list" in (report.outcomes[0].error or "")
    assert fingerprint(mirror) == before
