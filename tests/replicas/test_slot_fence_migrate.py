"""The migrate and discover jobs under a holder paused past its slot lease (issue 21).

A holder is "paused" by the emulator's ``gate`` fault (its request held, provably in flight, until
the test releases it); meanwhile its lease is lost (on PostgreSQL the real ``job_slot`` lease,
expired and claimed by another replica; on SQLite, where replicas mode does not run, a switch
standing for it). Pinned: after the lease is lost the migration holder sends no further create or
append and changes nothing in its ledger, and its successor settles what it left ``sent``; a
discovery writes nothing. Also pinned, as README states it: the one window no check closes (an
append past its check, held until after the successor settled that batch as absent) lands twice,
and ``migrate verify`` names it.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from functools import partial
from typing import Any, cast

import anyio
import anyio.to_thread
import pytest

from tests.migrate.conftest import (
    expected_items,
    items_in,
    new_emulator,
    sync_source,
    target_client,
    target_settings,
)
from tests.migrate.test_daemon import settings_for
from tests.replicas.test_slot_fence import Switch, paused, slot_fence, take_over
from tests.threads.test_discover import KEY as DISCOVER_KEY
from worker.client import ApiClient
from worker.config import Profile, Settings
from worker.daemon.fence import SlotLost
from worker.daemon.jobs import Jobs
from worker.daemon.slots import running_in
from worker.discover import discover
from worker.emulator import Emulator, FaultRule, ManualClock, serve_in_thread
from worker.migrate import ledger
from worker.migrate.mapping import Policy
from worker.migrate.run import Guard, MigrateReport, Migration
from worker.migrate.target import target_key
from worker.migrate.verify import verify_thread
from worker.store.db import Mirror
from worker.store.repo import thread_statuses
from worker.testing import emulated_client

KEY = target_key(target_settings("openai"))


async def migrate_under(
    mirror: Mirror, target: Emulator, guard: Guard, *, source: Emulator | None = None
) -> MigrateReport:
    """One migrate pass to an openai target (empty create, then appends of 20) under ``guard``."""
    async with target_client(target, "openai") as client, AsyncExitStack() as stack:
        reader = None
        if source is not None:
            reader = await stack.enter_async_context(emulated_client(source))
        migration = Migration(mirror, KEY, client, Policy(), source=reader, guard=guard)
        return await migration.run(None, None)


async def one_thread(mirror: Mirror, messages: int) -> tuple[Emulator, str]:
    source = new_emulator(seed=1)
    [thread_id] = source.seed(seed=3, threads=1, messages=messages)
    await sync_source(source, mirror, [thread_id])
    return source, thread_id


def ledger_of(mirror: Mirror, thread_id: str) -> tuple[Any, ...]:
    """The thread's ledger row and batches, as plain values."""
    rows = [r for r in ledger.rows(mirror, KEY) if r.thread_id == thread_id]
    plan = ledger.load_plan(mirror, KEY, thread_id)
    batches = [(b.seq, b.state, b.message_ids, b.item_ids) for b in plan.batches]
    row = [(r.conversation_id, r.items, r.last_item_id, r.state, r.migration_id) for r in rows]
    return tuple(row), tuple(batches)


@pytest.mark.anyio
async def test_a_migration_whose_lease_is_lost_before_its_first_write_sends_and_records_nothing(
    mirror: Mirror,
) -> None:
    """Paused while reading the thread's metadata from the source (before it plans): the plan's
    commit is refused, so no create is sent and the ledger stays empty; a holder of the lease
    then migrates the thread once."""
    source, thread_id = await one_thread(mirror, 25)
    target = new_emulator()
    lease = Switch()
    migrating = partial(migrate_under, mirror, target, lease.guard, source=source)
    async with paused(source, FaultRule("gate", route="thread.get"), migrating) as reports:
        lease.lose()
    assert reports[0].aborted is not None
    assert lease.checks == 1  # the plan's transaction, refused
    assert reports[0].totals()["requests"] == 0
    assert target.conversations.by_id == {}
    assert ledger.rows(mirror, KEY) == []

    report = await migrate_under(mirror, target, Switch().guard)
    assert report.aborted is None
    assert not report.failed
    [conversation] = target.conversations.by_id
    assert items_in(target, conversation) == expected_items(mirror, thread_id)


@pytest.mark.anyio
async def test_a_migrate_holder_paused_past_its_lease_sends_no_further_append(pg: Mirror) -> None:
    """45 messages: an empty create, then appends of 20, 20 and 5. The holder is paused with
    its first append in flight (past its check) while another replica takes the slot over.
    Released, that append lands; the holder's confirm is refused and it sends nothing more, its
    ledger as it was. The successor settles the batch as landed (no resend) and sends the rest:
    every message once."""
    _, thread_id = await one_thread(pg, 45)
    target = new_emulator()
    stale = slot_fence(pg, "a", "migrate")
    migrating = partial(migrate_under, pg, target, stale.guard)
    async with paused(target, FaultRule("gate", route="items.create"), migrating) as reports:
        at_pause = ledger_of(pg, thread_id)
        successor = take_over(pg, "b", "migrate")
    assert reports[0].aborted is not None
    assert stale.held.lost
    assert reports[0].totals()["requests"] == 2  # the create and the held append, nothing more
    assert ledger_of(pg, thread_id) == at_pause  # nothing recorded after the lease was lost
    assert [b[1] for b in at_pause[1]] == ["confirmed", "sent", "planned", "planned"]
    [conversation] = target.conversations.by_id
    assert len(items_in(target, conversation)) == 20  # the append in flight landed, once

    report = await migrate_under(pg, target, successor.guard)
    assert report.aborted is None
    assert not report.failed
    assert report.threads[0].settled == 1
    assert report.totals()["requests"] == 2  # the two appends left; the landed one not again
    assert list(target.conversations.by_id) == [conversation]
    assert items_in(target, conversation) == expected_items(pg, thread_id)


@pytest.mark.anyio
async def test_an_append_held_past_its_successors_settle_lands_twice_and_verify_names_it(
    pg: Mirror,
) -> None:
    """The window no check closes (README, "What runs exactly once"): the holder's append passed
    its check and is held until after the successor settled that batch as absent and sent it
    again. The target takes no token, so the late append lands: 20 items twice. The holder
    records nothing; ``migrate verify`` reports the conversation as differing."""
    _, thread_id = await one_thread(pg, 45)
    target = new_emulator()
    stale = slot_fence(pg, "a", "migrate")
    migrating = partial(migrate_under, pg, target, stale.guard)
    async with paused(target, FaultRule("gate", route="items.create"), migrating) as reports:
        successor = take_over(pg, "b", "migrate")
        report = await migrate_under(pg, target, successor.guard)
        assert report.aborted is None
        assert report.threads[0].settled == 1
        settled = ledger_of(pg, thread_id)
    assert reports[0].aborted is not None
    assert ledger_of(pg, thread_id) == settled  # the holder recorded nothing
    [conversation] = target.conversations.by_id
    expected = expected_items(pg, thread_id)
    assert items_in(target, conversation) == expected + expected[:20]
    [row] = ledger.rows(pg, KEY)
    async with target_client(target, "openai") as client:
        verdict = await verify_thread(pg, client, row, Policy())
    assert verdict.difference is not None
    assert "extra" in verdict.difference


class LosesAt(Switch):
    """A lease lost at its ``at``-th check (a pause between two of the run's steps)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def guard(self, session: Any) -> None:
        if self.checks + 1 >= self.at:
            self.lost = True
        super().guard(session)


@pytest.mark.anyio
async def test_a_lease_lost_after_a_batch_is_marked_sent_stops_its_append(mirror: Mirror) -> None:
    """The run's checks, in order: the plan's commit (1), before the empty create (2), the
    create's confirm with the first append's ``sent`` (3), before that append (4). Lost at 4
    (the holder paused between its ``sent`` commit and its POST): the append is not sent; the
    batch stays ``sent``, and the next holder settles it as absent and sends it once."""
    _, thread_id = await one_thread(mirror, 45)
    target = new_emulator()
    lease = LosesAt(4)
    report = await migrate_under(mirror, target, lease.guard)
    assert report.aborted is not None
    assert lease.checks == 4
    assert report.totals()["requests"] == 1  # the create only
    [conversation] = target.conversations.by_id
    assert items_in(target, conversation) == []
    assert [b[1] for b in ledger_of(mirror, thread_id)[1]] == [
        "confirmed",
        "sent",
        "planned",
        "planned",
    ]

    again = await migrate_under(mirror, target, Switch().guard)
    assert again.aborted is None
    assert again.threads[0].settled == 1
    assert again.totals()["requests"] == 3
    assert items_in(target, conversation) == expected_items(mirror, thread_id)


@pytest.mark.anyio
async def test_the_migrate_job_of_a_slot_taken_over_sends_and_records_nothing(pg: Mirror) -> None:
    """The daemon's migrate job passes its slot's fence down: run by a holder whose slot was
    taken over, it creates no conversation and leaves the ledger empty."""
    _, _thread_id = await one_thread(pg, 5)
    target = new_emulator()
    stale = slot_fence(pg, "a", "migrate")
    take_over(pg, "b", "migrate")
    with serve_in_thread(target) as url:
        jobs = Jobs(cast(ApiClient, None), pg, settings_for(pg, url, 60.0), gate=anyio.Lock())
        with running_in(stale):
            await jobs.migrate()
    assert stale.held.lost
    assert target.conversations.by_id == {}
    assert ledger.rows(pg, KEY) == []


def _tracked(mirror: Mirror) -> list[str]:
    with mirror.read() as session:
        return [s.thread_id for s in thread_statuses(session)]


def _project(threads: int) -> Emulator:
    clock = ManualClock(1_700_000_000.0)
    emulator = Emulator(api_key=DISCOVER_KEY, clock=clock)
    for _ in range(threads):
        emulator.create_thread()
        clock.advance(1)
    return emulator


@pytest.mark.anyio
async def test_a_discovery_whose_lease_is_lost_while_listing_tracks_nothing(
    mirror: Mirror,
) -> None:
    project = _project(3)
    lease = Switch()
    raised: list[BaseException] = []

    async def holder() -> None:
        async with emulated_client(project, profile=Profile.FOUNDRY) as client:
            try:
                await discover(client, mirror, guard=lease.guard)
            except SlotLost as exc:
                raised.append(exc)

    async with paused(project, FaultRule("gate", route="thread.list"), holder):
        lease.lose()
    assert len(raised) == 1
    assert lease.checks == 1
    assert _tracked(mirror) == []


@pytest.mark.anyio
async def test_the_discover_job_of_a_slot_taken_over_writes_nothing(pg: Mirror) -> None:
    """The daemon's discover job, its listing paused while another replica takes the slot: it
    tracks nothing, nor moves its ``since`` on (the successor's discovery lists those threads)."""
    project = _project(3)
    stale = slot_fence(pg, "a", "discover")
    async with emulated_client(project, profile=Profile.FOUNDRY) as client:
        settings = Settings(database_url=pg.safe_url)
        jobs = Jobs(client, pg, settings, gate=anyio.Lock())
        raised: list[BaseException] = []

        async def holder() -> None:
            with running_in(stale):
                try:
                    await jobs.discover()
                except SlotLost as exc:
                    raised.append(exc)

        async with paused(project, FaultRule("gate", route="thread.list"), holder):
            successor = take_over(pg, "b", "discover")
        assert len(raised) == 1
        assert stale.held.lost
        assert _tracked(pg) == []
        assert jobs.discovered_since is None

        fresh = Jobs(client, pg, settings, gate=anyio.Lock())
        with running_in(successor):
            assert await fresh.discover() == 3
    assert len(_tracked(pg)) == 3
