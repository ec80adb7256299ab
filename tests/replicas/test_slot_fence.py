"""Remote side effects of periodic jobs under a holder paused past its lease (issue 21).

A holder is "paused" by the emulator's ``gate`` fault (its request is held, provably in flight,
until the test releases it) or by an event in its publish hook; meanwhile its lease is taken over
(on PostgreSQL the real ``job_slot`` lease, expired and claimed by another replica; on SQLite,
where replicas mode does not run, a switch standing for it). Pinned: after the lease is lost the
holder sends no modify, publishes no backup and records nothing; the one window no check can close
(between a passed check and the act reaching the service) yields at most one repeat of the same
idempotent act.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
import anyio.to_thread
import pytest
from sqlalchemy import text
from sqlmodel import Session

from tests.daemon.test_history import _left, _run
from tests.outbox.conftest import World, make_world
from worker.backup import run_backup
from worker.backup.lock import backup_lock
from worker.backup.manifest import MANIFEST
from worker.backup.snapshot import snapshot_name, take_snapshot
from worker.backup.verify import verify
from worker.client import ApiClient
from worker.config import BackupSettings, Settings
from worker.daemon.fence import SlotLost
from worker.daemon.jobs import BUSY_RETRY, Jobs
from worker.daemon.replicas import Held
from worker.daemon.slots import SlotFence, claim_slot, running_in
from worker.emulator import Emulator, FaultRule
from worker.outbox import PushReport, push_pending, set_metadata, show_metadata
from worker.store.db import Mirror
from worker.testing import SleepRecorder, emulated_client

HELD = 30.0  # how long a test waits for the gate to hold the request (it holds at once)
SLOT = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)
T = TypeVar("T")


class Switch:
    """A job lease standing in for ``job_slot`` on SQLite: holds until ``lose()``."""

    def __init__(self) -> None:
        self.lost = False
        self.checks = 0

    def guard(self, _session: Session) -> None:
        self.checks += 1
        if self.lost:
            raise SlotLost("push")

    def check(self) -> None:
        self.guard(cast(Session, None))

    def lose(self) -> None:
        self.lost = True


def slot_fence(mirror: Mirror, owner: str, job: str = "push") -> SlotFence:
    """``owner`` claims ``job``'s current slot on PostgreSQL: the fence its side effects check."""
    with mirror.write() as session:
        claimed = claim_slot(session, job, owner, 3600.0, 60.0)
    assert claimed is not None, f"{owner} could not claim {job}"
    epoch, slot = claimed
    return SlotFence(mirror, owner, 60.0, Held(job, epoch), slot)


def take_over(mirror: Mirror, owner: str, job: str = "push") -> SlotFence:
    """The holder's lease runs out (it is paused) and ``owner`` claims the unfinished slot."""
    with mirror.write() as session:
        session.execute(
            text("UPDATE job_slot SET lease_until = now() - interval '1 second' WHERE name = :n"),
            {"n": job},
        )
    return slot_fence(mirror, owner, job)


def edit_one(world: World) -> tuple[str, str, dict[str, str]]:
    thread = world.thread_ids[0]
    msg = world.messages(thread)[0]
    set_metadata(world.mirror, thread, msg["id"], set={"label": "refund"})
    return thread, msg["id"], {**dict(msg["metadata"] or {}), "label": "refund"}


def assert_applied_once(world: World, thread: str, message: str, intended: dict[str, str]) -> None:
    """One modify of ``message`` reached the server, which holds ``intended``, and the mirror
    records the edit applied."""
    assert Counter(c["message_id"] for c in world.applied_modifies()) == {message: 1}
    assert world.remote_metadata(thread, message) == intended
    assert show_metadata(world.mirror, thread, message).state == "applied"


async def push_under(world: World, guard: Any) -> PushReport:
    async with emulated_client(world.emulator) as client:
        return await push_pending(client, world.mirror, sleep=SleepRecorder(), guard=guard)


@asynccontextmanager
async def paused(
    emulator: Emulator, rule: FaultRule, act: Callable[[], Awaitable[T]]
) -> AsyncIterator[list[T]]:
    """``act`` runs with the request ``rule`` matches held by ``emulator``'s gate (the holder
    paused, its request in flight): the body runs once it is held; leaving releases it and waits
    for ``act`` to end. The list yielded holds ``act``'s result once it has ended."""
    emulator.add_fault(rule)
    results: list[T] = []

    async def holder() -> None:
        results.append(await act())

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await anyio.to_thread.run_sync(emulator.gate.wait_held, HELD)  # off the event loop
        yield results
        emulator.gate.release()


def paused_push(
    world: World, route: str, thread: str, guard: Any
) -> AbstractAsyncContextManager[list[PushReport]]:
    """A push under ``guard``, paused at its ``route`` request for ``thread`` (see ``paused``)."""
    rule = FaultRule("gate", route=route, thread_id=thread)
    return paused(world.emulator, rule, partial(push_under, world, guard))


@pytest.mark.anyio
async def test_a_push_paused_past_its_lease_sends_no_modify_and_its_successor_sends_one(
    pg: Mirror,
) -> None:
    """The holder is held mid-read; another replica takes the slot over; released, the holder's
    check before the modify finds the lease lost: nothing sent, nothing recorded."""
    world = await make_world(pg)
    thread, message, intended = edit_one(world)
    stale = slot_fence(pg, "a")
    async with paused_push(world, "get", thread, stale.guard) as reports:
        successor = take_over(pg, "b")  # the holder is between its read and its modify, paused
    assert reports[0].aborted is not None
    assert stale.held.lost
    assert world.applied_modifies() == []  # no side effect after the lease was lost
    assert show_metadata(pg, thread, message).state == "pending"

    report = await push_under(world, successor.guard)
    assert report.ok
    assert_applied_once(world, thread, message, intended)


@pytest.mark.anyio
async def test_a_modify_past_its_check_lands_at_most_once_more_with_the_same_map(
    pg: Mirror,
) -> None:
    """The residual window: the holder's check passed and its modify is in flight (held) when
    it loses the lease; the successor pushes the same edit. The held modify then lands: one
    repeat of the same complete map (idempotent), and the holder records nothing."""
    world = await make_world(pg)
    thread, message, intended = edit_one(world)
    stale = slot_fence(pg, "a")
    async with paused_push(world, "modify", thread, stale.guard) as reports:
        # The holder is past its check, its modify on the wire: the window no check closes.
        successor = take_over(pg, "b")
        assert (await push_under(world, successor.guard)).ok
        assert show_metadata(pg, thread, message).state == "applied"
    assert reports[0].aborted is not None  # its record was refused: the lease is b's
    assert [o.result for o in reports[0].outcomes] == ["unrecorded"]
    modifies = world.applied_modifies()
    assert [c["message_id"] for c in modifies] == [message, message]
    assert modifies[0]["body"] == modifies[1]["body"] == {"metadata": intended}
    assert world.remote_metadata(thread, message) == intended
    assert show_metadata(pg, thread, message).state == "applied"


@pytest.mark.anyio
async def test_a_push_whose_lease_is_lost_during_its_modify_records_nothing(
    mirror: Mirror,
) -> None:
    """The outcome is recorded only under the fence: lost meanwhile, the edit stays pending and
    the next holder completes it by a read, with no second modify."""
    world = await make_world(mirror)
    thread, message, intended = edit_one(world)
    lease = Switch()
    async with paused_push(world, "modify", thread, lease.guard) as reports:
        lease.lose()
    assert reports[0].aborted is not None
    assert show_metadata(mirror, thread, message).state == "pending"
    # The report says what the mirror holds: sent and answered, but not recorded as applied.
    [unrecorded] = reports[0].outcomes
    assert (unrecorded.result, unrecorded.written) == ("unrecorded", True)
    assert reports[0].applied == []
    assert reports[0].unrecorded == [unrecorded]

    report = await push_under(world, Switch().guard)
    assert report.ok
    assert report.requests == 1  # the read only: the server already holds the wish
    assert_applied_once(world, thread, message, intended)


@pytest.mark.anyio
async def test_a_push_whose_lease_is_lost_before_its_modify_sends_nothing(
    mirror: Mirror,
) -> None:
    world = await make_world(mirror)
    thread, message, _ = edit_one(world)
    lease = Switch()
    async with paused_push(world, "get", thread, lease.guard) as reports:
        lease.lose()
    assert reports[0].aborted is not None
    assert lease.checks == 1  # checked right before the modify, and refused it
    assert world.applied_modifies() == []
    assert show_metadata(mirror, thread, message).state == "pending"


def _snapshots(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir() if p.name.startswith(("threadsync-", ".thread")))


@pytest.mark.anyio
async def test_a_backup_whose_lease_is_lost_publishes_nothing(
    mirror: Mirror, tmp_path: Path
) -> None:
    lease = Switch()
    lease.lose()
    settings = Settings(database_url=mirror.safe_url)
    with pytest.raises(SlotLost):
        await run_backup(
            settings,
            mirror,
            None,
            dest=tmp_path,
            sync_first=False,
            slot=SLOT,
            before_publish=lease.check,
        )
    assert _snapshots(tmp_path) == [".threadsync-backup.lock"]  # no snapshot, no partial left


def test_two_publishes_of_one_slot_leave_one_complete_snapshot(
    mirror: Mirror, tmp_path: Path
) -> None:
    """The holder passed its check and is paused before its rename; its successor publishes the
    slot's snapshot; the holder's rename then finds the name taken and discards its own."""
    checked, go_on = threading.Event(), threading.Event()
    first = datetime(2026, 12, 6, 3, 0, 5, tzinfo=UTC)
    second = first + timedelta(seconds=30)
    found: list[Path] = []

    def paused_check() -> None:
        checked.set()  # the lease held here ...
        assert go_on.wait(HELD)  # ... and then the process stopped

    def holder() -> None:
        found.append(
            take_snapshot(mirror, tmp_path, now=first, slot=SLOT, before_publish=paused_check).path
        )

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert checked.wait(HELD)
        successor = take_snapshot(mirror, tmp_path, now=second, slot=SLOT)
    finally:
        go_on.set()
        thread.join()
    name = snapshot_name(SLOT)
    assert successor.path == found[0] == tmp_path / name
    assert _snapshots(tmp_path) == [name]  # one snapshot, the holder's partial removed
    assert b"2026-12-06T03:00:35" in (tmp_path / name / MANIFEST).read_bytes()  # the successor's
    assert verify(tmp_path / name).ok
    # A slot resumed after its snapshot was published takes no second one.
    again = take_snapshot(mirror, tmp_path, now=second, slot=SLOT, before_publish=Switch().check)
    assert again.path == tmp_path / name
    assert _snapshots(tmp_path) == [name]


@pytest.mark.anyio
async def test_a_slot_backup_waits_for_a_destination_another_backup_still_locks(
    pg: Mirror, tmp_path: Path
) -> None:
    """A holder paused past its lease keeps the destination's lock until it wakes: its
    successor waits for it (never ending the slot as failed), then publishes the slot once."""
    fence = slot_fence(pg, "b", "backup")
    settings = Settings(database_url=pg.safe_url, backup=BackupSettings(dest=tmp_path))
    jobs = Jobs(cast(ApiClient, None), pg, settings, gate=anyio.Lock())
    paused_holder = backup_lock(tmp_path)
    paused_holder.__enter__()
    waits: list[float] = []

    async def holder_wakes(seconds: float) -> None:  # the successor found the lock held
        waits.append(seconds)
        paused_holder.__exit__(None, None, None)

    jobs.sleep = holder_wakes
    with running_in(fence):
        await jobs.backup()
    assert waits == [BUSY_RETRY]
    name = snapshot_name(fence.slot)
    assert _snapshots(tmp_path) == [".threadsync-backup.lock", name]
    assert verify(tmp_path / name).ok


@pytest.mark.anyio
async def test_history_pruning_prunes_nothing_once_its_lease_is_lost(pg: Mirror) -> None:
    old = _run(pg, days_ago=40)
    fence = slot_fence(pg, "a", "history")
    take_over(pg, "b", "history")
    jobs = Jobs(cast(ApiClient, None), pg, Settings(database_url=pg.safe_url), gate=anyio.Lock())
    with running_in(fence), pytest.raises(SlotLost):
        await jobs.prune_history(now=datetime(2026, 11, 28, 12, 0, tzinfo=UTC))
    assert old in _left(pg)[0]
