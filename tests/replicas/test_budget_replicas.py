"""Both halves of issue 21 at once, on PostgreSQL: the replicas' fenced claim in the budget's order,
claims sized from the budget and capped by what a replica syncs at once, the lanes in replicas
mode, and the adaptive reschedule only for threads the replica still holds."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import Session, select

from tests.daemon.test_dispatcher import NOW, Clock, settings
from tests.replicas.test_leases import expire
from worker.daemon.dispatcher import Dispatcher
from worker.daemon.due import Checked, aware, claim_leases
from worker.daemon.fence import Fence
from worker.daemon.replicas import Replica
from worker.emulator import Emulator, ManualClock
from worker.store.db import Mirror
from worker.store.models import TrackedThread
from worker.store.repo import add_threads
from worker.testing import emulated_client

ADAPTIVE: dict[str, Any] = {"min_interval": 60.0, "max_interval": 960.0, "active_hold": 0.0}


@pytest.fixture
def pg(pg_url: str) -> Iterator[Mirror]:
    mirror = Mirror(pg_url)
    yield mirror
    mirror.dispose()


def rows(mirror: Mirror) -> dict[str, TrackedThread]:
    with mirror.read() as session:
        return {r.thread_id: r for r in session.exec(select(TrackedThread))}


def test_a_fenced_claim_takes_the_most_overdue_relative_to_its_interval_first(pg: Mirror) -> None:
    """The replicas' one statement (owner, database-clock lease, epoch + 1) in the budget's order:
    never scheduled first, then by (now - due) / interval."""
    schedule = {
        "thread_day_hour": (3600.0, 86400.0),  # 0.042
        "thread_minute_5s": (5.0, 60.0),  # 0.083
        "thread_day_3h": (10800.0, 86400.0),  # 0.125
        "thread_new": (None, None),
        "thread_unknown_3s": (3.0, None),  # never checked: the default interval (60 s) -> 0.05
        "thread_future": (-10.0, 60.0),  # not due
    }
    with pg.write() as session:
        add_threads(session, list(schedule))
    with pg.write() as session:
        for thread_id, (late, interval) in schedule.items():
            row = session.get(TrackedThread, thread_id)
            assert row is not None
            row.next_sync_at = None if late is None else NOW - timedelta(seconds=late)
            row.check_interval = interval

    def claim(session: Session, owner: str, limit: int) -> list[tuple[str, int]]:
        got = claim_leases(
            session,
            now=NOW,
            owner=owner,
            lease=60.0,
            limit=limit,
            fenced=True,
            default_interval=60.0,
        )
        return list(got.epochs.items())

    with pg.write() as session:
        assert claim(session, "a", 2) == [("thread_new", 1), ("thread_day_3h", 1)]
    with pg.write() as session:
        assert claim(session, "b", 100) == [
            ("thread_minute_5s", 1),
            ("thread_unknown_3s", 1),
            ("thread_day_hour", 1),
        ]
    owners = {t: r.lease_owner for t, r in rows(pg).items()}
    assert owners == {
        "thread_new": "a",
        "thread_day_3h": "a",
        "thread_minute_5s": "b",
        "thread_unknown_3s": "b",
        "thread_day_hour": "b",
        "thread_future": None,
    }


@pytest.mark.anyio
async def test_replica_claims_follow_the_budget_capped_by_capacity_and_run_back_to_back(
    pg: Mirror,
) -> None:
    """concurrency 4: at most 8 claimed at a time, however large the budget; a small budget
    claims less. The dispatch job's lanes (4 each) take all 30 due threads in one run, and every
    thread gets its adaptive interval and gives its lease back."""
    emulator = Emulator(clock=ManualClock(), seed=11)
    ids = emulator.seed(seed=24, threads=30, messages=2)
    with pg.write() as session:
        add_threads(session, ids)
    replica = Replica(pg, ttl=60.0, replica_id="r1")
    replica.register()
    sizes: list[int] = []
    claim = replica.claim

    def counted(session: Session, **kwargs: Any) -> Fence:
        fence = claim(session, **kwargs)
        sizes.append(len(fence.epochs))
        return fence

    replica.claim = counted  # type: ignore[method-assign]
    async with emulated_client(emulator) as client:
        small = Dispatcher(
            client,
            pg,
            settings(pg, max_requests_per_second=1.0, dispatch_interval=5.0, **ADAPTIVE),
            owner=replica.id,
            replica=replica,
            now=Clock(),
        )
        assert small.claim_limit() == 5  # 1 request/s x 5 s, one request per pass
        d = Dispatcher(
            client,
            pg,
            settings(pg, max_requests_per_second=1000.0, dispatch_interval=5.0, **ADAPTIVE),
            owner=replica.id,
            replica=replica,
            now=Clock(),
        )
        assert d.claim_limit() == 8  # 2 x sync.concurrency, not the 5,000 the budget serves
        total = await d.dispatch()
    assert total.claimed == 30
    assert sum(sizes) == 30
    assert max(sizes) == 4  # each of the two lanes claims half
    after = rows(pg)
    assert {r.lease_owner for r in after.values()} == {None}
    assert {r.check_interval for r in after.values()} == {60.0}  # a first sync changed each
    assert {r.lease_epoch for r in after.values()} == {1}


def test_settling_reschedules_only_the_threads_the_replica_still_holds(pg: Mirror) -> None:
    """A thread taken over mid-batch keeps its new holder's lease and schedule: neither its
    interval, nor its check times, nor its next time come from the replica that lost it."""
    with pg.write() as session:
        add_threads(session, ["thread_kept", "thread_lost"])
    replica = Replica(pg, ttl=60.0, replica_id="r1")
    replica.register()
    with pg.write() as session:
        fence = replica.claim(session, now=NOW, limit=2, due_only=True, after=None)
    assert set(fence.epochs) == {"thread_kept", "thread_lost"}
    expire(pg, ["thread_lost"])
    with pg.write() as session:
        taken = claim_leases(session, now=NOW, owner="r2", lease=60.0, limit=5, fenced=True)
    assert taken.epochs == {"thread_lost": 2}
    d = Dispatcher(
        None,  # type: ignore[arg-type]  # settling sends no request
        pg,
        settings(pg, sync_jitter=0.0, **ADAPTIVE),
        owner=replica.id,
        replica=replica,
        now=Clock(),
    )
    at = NOW + timedelta(seconds=3)
    checked = {t: Checked(changed=True, ok=True, at=at) for t in fence.epochs}
    d._settle(list(fence.epochs), checked, fence)
    kept, lost = rows(pg)["thread_kept"], rows(pg)["thread_lost"]
    assert (kept.lease_owner, kept.check_interval, aware(kept.last_checked_at)) == (
        None,
        60.0,
        at,
    )
    assert aware(kept.next_sync_at) == at + timedelta(seconds=60.0 - d.freshness.lead)
    assert (lost.lease_owner, lost.lease_epoch) == ("r2", 2)
    assert (lost.check_interval, lost.last_checked_at, lost.last_changed_at) == (None, None, None)
    assert lost.next_sync_at is None
    assert fence.lost == {"thread_lost"}


def test_the_budget_is_shared_by_the_live_replicas(pg: Mirror) -> None:
    """daemon.max_requests_per_second is global: each replica plans for and paces at its share,
    counted at registration and at every renewal round; a replica gone stops counting."""
    a = Replica(pg, ttl=60.0, replica_id="a")
    a.register()
    assert a.peers == 1
    d = Dispatcher(
        None,  # type: ignore[arg-type]  # no request here
        pg,
        settings(pg, max_requests_per_second=50.0, dispatch_interval=1.0),
        owner=a.id,
        replica=a,
        now=Clock(),
    )
    assert d.budget == 50.0
    b = Replica(pg, ttl=60.0, replica_id="b")
    b.register()
    assert b.peers == 2
    a.renew()
    assert (a.peers, d.budget) == (2, 25.0)
    b.deregister()
    a.renew()
    assert (a.peers, d.budget) == (1, 50.0)
    c = Replica(pg, ttl=60.0, replica_id="c")
    c.register()
    with pg.write() as session:  # c's heartbeat older than one TTL: killed, not yet pruned
        session.execute(
            text(
                "UPDATE daemon_replica SET heartbeat_at = now() - interval '61 seconds'"
                " WHERE replica_id = 'c'"
            )
        )
    a.renew()
    assert a.peers == 1
