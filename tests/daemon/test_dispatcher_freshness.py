"""The dispatcher plans for the request budget and feeds each pass's outcome to the schedule."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import select

from tests.daemon.test_dispatcher import NOW, Clock, emulator, run_with, track
from worker.daemon.dispatcher import Dispatcher
from worker.daemon.due import aware
from worker.emulator import Emulator
from worker.store.db import Mirror
from worker.store.models import TrackedThread

__all__ = ["emulator"]  # the fixture, shared with test_dispatcher
pytestmark = pytest.mark.anyio

ADAPTIVE: dict[str, Any] = {"min_interval": 60.0, "max_interval": 960.0, "interval_stretch": 2.0}


def rows(mirror: Mirror) -> dict[str, TrackedThread]:
    with mirror.read() as session:
        return {r.thread_id: r for r in session.exec(select(TrackedThread))}


async def test_claims_are_sized_from_the_budget(emulator: Emulator, mirror: Mirror) -> None:
    """2 requests/s over a 5 s dispatch interval: 10 one-request passes per claim, not the 30 due;
    passes that took more requests shrink the next claim."""
    ids = emulator.seed(seed=21, threads=30, messages=2)
    track(mirror, *ids)

    async def two_runs(d: Dispatcher) -> tuple[int, int, int]:
        assert d.claim_limit() == 10
        first = await d.dispatch_once()
        d.requests_per_pass = 2.5  # as if the passes had needed 2.5 requests each
        return first.claimed, d.claim_limit(), (await d.dispatch_once()).claimed

    got = await run_with(
        emulator, mirror, two_runs, max_requests_per_second=2.0, dispatch_interval=5.0
    )
    assert got == (10, 4, 4)


async def test_a_changed_thread_comes_back_at_the_minimum_an_idle_one_stretches(
    emulator: Emulator, mirror: Mirror
) -> None:
    """First pass (messages added): interval = min; next idle pass: doubled; a new message: min."""
    (thread,) = emulator.seed(seed=22, threads=1, messages=3)
    track(mirror, thread)
    clock = Clock()

    async def passes(d: Dispatcher) -> list[Any]:
        seen = []
        for append in (False, False, True):
            if append:
                emulator.append_messages(thread, n=1)
            await d.dispatch_once()
            due = aware(rows(mirror)[thread].next_sync_at)
            assert due is not None
            seen.append((rows(mirror)[thread].check_interval, due - clock.at))
            clock.at = due
        return seen

    seen = await run_with(
        emulator, mirror, passes, clock=clock, sync_jitter=0.0, active_hold=0.0, **ADAPTIVE
    )
    lead = timedelta(seconds=10.0)  # two dispatch intervals of 5 s
    assert seen == [
        (60.0, timedelta(seconds=60) - lead),
        (120.0, timedelta(seconds=120) - lead),
        (60.0, timedelta(seconds=60) - lead),
    ]
    row = rows(mirror)[thread]
    assert aware(row.last_changed_at) == clock.at - (timedelta(seconds=60) - lead)
    assert aware(row.last_checked_at) > NOW  # type: ignore[operator]


async def test_the_dispatch_job_runs_batches_back_to_back_while_claims_are_full(
    emulator: Emulator, mirror: Mirror
) -> None:
    """25 due, claims of 10: a job run takes batches while they come back full (10, then 10 + 5);
    a stop request ends it after the batch in hand."""
    ids = emulator.seed(seed=23, threads=25, messages=1)
    track(mirror, *ids)

    async def job(d: Dispatcher) -> tuple[int, int]:
        stopped = await d.dispatch(lambda: False)
        rest = await d.dispatch()
        return stopped.claimed, rest.claimed

    got = await run_with(emulator, mirror, job, max_requests_per_second=2.0, dispatch_interval=5.0)
    assert got == (10, 15)
