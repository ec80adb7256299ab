"""A server that never finishes answering: the request deadline ends the request, the run's
deadline ends the run; on SQLite and PostgreSQL, against the in-process emulator.

A ``trickle`` fault sends a page's headers, then a byte every interval: each read arrives long
before any read timeout, so only an overall deadline ends it.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from sqlalchemy import select

from worker.config import RetrySettings
from worker.emulator import Emulator, FaultRule, ManualClock
from worker.export.source import Selection, iter_rows
from worker.store.db import Mirror
from worker.store.models import SyncRunThread, SyncState
from worker.store.repo import add_threads, thread_statuses
from worker.sync.runner import NOT_REACHED, STOPPED, sync_threads
from worker.testing import emulated_client

pytestmark = pytest.mark.anyio

FOREVER_MS = 3_600_000.0  # a byte an hour: the answer never ends within a test


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(clock=ManualClock(), seed=11)


def seeded(emulator: Emulator, mirror: Mirror, **seed: Any) -> list[str]:
    ids = emulator.seed(**seed)
    with mirror.write() as session:
        add_threads(session, ids)
    return ids


def exported(mirror: Mirror, thread_id: str) -> list[Any]:
    return [orjson.loads(r.raw) for r in iter_rows(mirror, Selection(thread_ids=[thread_id]))]


def truth(emulator: Emulator, thread_id: str) -> list[Any]:
    return list(emulator.truth()["threads"][thread_id])


async def test_a_trickled_page_fails_the_thread_with_the_request_deadline(
    emulator: Emulator, mirror: Mirror
) -> None:
    """Every list of one thread trickles: that thread fails this pass, transiently, saying
    why; the others sync; the next pass (server healthy) converges."""
    slow, fine = seeded(emulator, mirror, seed=1, threads=2, messages=30)
    emulator.add_fault(
        FaultRule(fault="trickle", times=None, route="list", thread_id=slow, byte_interval_ms=20.0)
    )
    async with emulated_client(
        emulator, retry=RetrySettings(max_attempts=2), request_timeout=0.2
    ) as client:
        report = await sync_threads(client, mirror)
    assert not report.ok
    [failed] = report.failed
    assert failed.thread_id == slow
    assert failed.result == "failed"
    assert failed.error is not None
    assert "request exceeded api.request_timeout (0.2 s)" in failed.error
    assert "gave up after 2 attempts" in failed.error
    assert exported(mirror, fine) == truth(emulator, fine)
    assert exported(mirror, slow) == []
    with mirror.read() as session:
        status = {s.thread_id: s for s in thread_statuses(session)}
    assert "request_timeout" in (status[slow].last_error or "")

    emulator.clear_faults()
    async with emulated_client(emulator) as client:
        assert (await sync_threads(client, mirror)).ok
    assert exported(mirror, slow) == truth(emulator, slow)


async def test_the_run_deadline_stops_a_hung_pass_and_reports_threads_not_reached(
    emulator: Emulator, mirror: Mirror
) -> None:
    """One at a time; the first thread's second page hangs. At the deadline that pass stops
    with its first page committed (cursor with it), the others are not reached, the run is
    recorded; the next run resumes and converges with nothing lost or twice."""
    first, *rest = seeded(emulator, mirror, seed=2, threads=3, messages=250)
    # The first three list requests of the thread pass (a zero latency rule retires after
    # them: two pages, and the tie-order probe a mirror's first pages wait for), every later
    # one trickles forever.
    emulator.add_fault(FaultRule(fault="latency", times=3, route="list", thread_id=first))
    emulator.add_fault(
        FaultRule(
            fault="trickle", times=None, route="list", thread_id=first, byte_interval_ms=FOREVER_MS
        )
    )
    async with emulated_client(emulator) as client:
        report = await sync_threads(
            client, mirror, thread_ids=[first, *rest], concurrency=1, deadline=0.5
        )
    assert not report.ok
    results = {o.thread_id: o for o in report.outcomes}
    assert results[first].result == STOPPED
    assert "deadline (0.5 s)" in (results[first].error or "")
    assert [results[t].result for t in rest] == [NOT_REACHED, NOT_REACHED]
    assert all("deadline (0.5 s)" in (results[t].error or "") for t in rest)
    # The pages fetched before the hang (newest-first) and their cursor committed together.
    kept = exported(mirror, first)
    assert len(kept) == 200
    assert results[first].counts.added == 200
    assert kept == truth(emulator, first)[-len(kept) :]
    with mirror.read() as session:
        state = session.get(SyncState, first)
        assert state is not None
        assert state.initial_after == kept[0]["id"]
        recorded = {r.thread_id: r for r in session.scalars(select(SyncRunThread))}
    assert {t: recorded[t].ok for t in (first, *rest)} == dict.fromkeys((first, *rest), False)
    assert all(exported(mirror, t) == [] for t in rest)

    emulator.clear_faults()
    async with emulated_client(emulator) as client:
        assert (await sync_threads(client, mirror)).ok
    for thread_id in (first, *rest):
        assert exported(mirror, thread_id) == truth(emulator, thread_id)


async def test_a_run_within_its_deadline_is_untouched(emulator: Emulator, mirror: Mirror) -> None:
    ids = seeded(emulator, mirror, seed=3, threads=2, messages=20)
    async with emulated_client(emulator) as client:
        report = await sync_threads(client, mirror, deadline=3600)
    assert report.ok
    assert [o.result for o in report.outcomes] == ["synced", "synced"]
    for thread_id in ids:
        assert exported(mirror, thread_id) == truth(emulator, thread_id)
