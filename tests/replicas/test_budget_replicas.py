"""Both halves of issue 21 at once, on PostgreSQL: the replicas' fenced claim in the budget's order,
claims sized from the budget and capped by what a replica syncs at once, the lanes in replicas
mode, and the adaptive reschedule only for threads the replica still holds."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from sqlalchemy import text
from sqlmodel import Session, select

from tests.daemon.test_dispatcher import NOW, Clock, settings
from tests.replicas.test_leases import expire
from worker.client.pacer import Pacer
from worker.daemon.dispatcher import Dispatcher
from worker.daemon.due import Checked, aware, claim_leases
from worker.daemon.fence import Fence
from worker.daemon.replicas import Replica
from worker.emulator import Emulator, ManualClock
from worker.store.db import Mirror
from worker.store.models import TrackedThread
from worker.store.repo import add_threads
from worker.testing import FakeClock, emulated_client

ADAPTIVE: dict[str, Any] = {"min_interval": 60.0, "max_interval": 960.0, "active_hold": 0.0}


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

        def under(budget: float) -> Dispatcher:
            return Dispatcher(
                client,
                pg,
                settings(pg, max_requests_per_second=budget, dispatch_interval=5.0, **ADAPTIVE),
                owner=replica.id,
                replica=replica,
                now=Clock(),
            )

        small = under(1.0)
        assert small.claim_limit() == 5  # 1 request/s x 5 s, one request per pass
        d = under(1000.0)
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


# -- the join window: a replica's share of the budget -----------------------------------------


def within_bucket(sends: list[float], rate_at: Callable[[float], float], burst: int) -> bool:
    """Every window [sends[i], sends[j]] holds at most ``burst`` + the integral of the rate over
    it (integrated in 1 ms steps; the rate is piecewise constant here)."""
    step = 0.001
    for i, start in enumerate(sends):
        for j in range(i, len(sends)):
            end = sends[j]
            steps = round((end - start) / step)
            allowed = burst + sum(rate_at(start + (k + 0.5) * step) * step for k in range(steps))
            if j - i + 1 > allowed + 1e-6:
                return False
    return True


@pytest.mark.anyio
async def test_a_share_that_changes_voids_the_slots_given_at_the_old_one() -> None:
    """Four callers pace at 10/s; at 1.05 s the share halves (a replica joined), at 2.03 s it
    quadruples (two left). Over every window the requests stay within the bucket (burst 2) plus
    the integral of the rate in force: slots reserved at 10/s are not spent at 5/s (the pacer
    before this change failed it)."""
    clock = FakeClock(start=0.0)
    pacer = Pacer(10.0, burst=2, clock=clock.now, sleep=clock.sleep)
    changes = [(0.0, 10.0), (1.05, 5.0), (2.03, 20.0)]
    sends: list[float] = []

    def rate_at(t: float) -> float:
        return [r for at, r in changes if at <= t][-1]

    async def caller() -> None:
        for _ in range(12):
            await pacer.acquire()
            sends.append(clock.now())

    async def shares() -> None:
        for at, rate in changes[1:]:
            await clock.sleep(at - clock.now())
            pacer.set_rate(rate)

    async with anyio.create_task_group() as tg:
        tg.start_soon(shares)
        for _ in range(4):
            tg.start_soon(caller)
    sends.sort()
    assert len(sends) == 48
    assert within_bucket(sends, rate_at, burst=2)
    assert sum(1.05 <= t < 2.03 for t in sends) <= 2 + 5 * 0.98  # the halved share held


@pytest.mark.anyio
async def test_past_its_grant_the_pacer_holds_every_caller_until_the_next() -> None:
    """A share granted until 2 s: no request at or after 2 s, whoever waited for a slot, until the
    next grant at 3 s; held (``until=-inf``), nothing goes at all."""
    clock = FakeClock(start=0.0)
    pacer = Pacer(10.0, burst=1, clock=clock.now, sleep=clock.sleep)
    pacer.set_rate(10.0, until=2.0)
    sends: list[float] = []

    async def caller() -> None:
        for _ in range(10):
            await pacer.acquire()
            sends.append(clock.now())

    async def regrant() -> None:
        await clock.sleep(3.0)
        pacer.set_rate(10.0, until=float("inf"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(regrant)
        for _ in range(3):
            tg.start_soon(caller)
    assert len(sends) == 30
    assert not [t for t in sends if 2.0 <= t < 3.0]
    assert sum(t < 2.0 for t in sends) == 20
    held = Pacer(10.0, clock=clock.now, sleep=clock.sleep)
    held.set_rate(10.0, until=float("-inf"))
    with anyio.move_on_after(0.05):
        await held.acquire()
        pytest.fail("a held pacer let a request go")


async def went(pacer: Pacer) -> bool:
    """Does a request get through this pacer now (without time passing)?"""
    done = anyio.Event()

    async def one() -> None:
        await pacer.acquire()
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(one)
        await anyio.lowlevel.checkpoint()
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    return done.is_set()


def granted(pacers: dict[str, Pacer], now: float) -> float:
    """The requests per second the replicas may spend together now."""
    return sum(p.rate or 0.0 for p in pacers.values() if p.granted_until > now)


def paced_pair(pg: Mirror) -> tuple[FakeClock, dict[str, Pacer], Replica, Replica]:
    """Replicas a and b sharing a budget of 20 on one fake clock, each with its pacer attached
    (neither registered yet)."""
    clock = FakeClock(start=0.0)
    pacers: dict[str, Pacer] = {}
    replicas: dict[str, Replica] = {}
    for name in ("a", "b"):
        replicas[name] = Replica(pg, ttl=60.0, replica_id=name, budget=20.0, clock=clock.now)
        pacers[name] = Pacer(20.0, clock=clock.now, sleep=clock.sleep)
        replicas[name].attach(pacers[name])
    return clock, pacers, replicas["a"], replicas["b"]


def age_heartbeat(pg: Mirror, replica: str, seconds: int) -> None:
    """``replica``'s heartbeat as if it last beat ``seconds`` ago (paused meanwhile)."""
    with pg.write() as session:
        session.execute(
            text(
                "UPDATE daemon_replica SET heartbeat_at = now() - make_interval(secs => :s)"
                " WHERE replica_id = :r"
            ),
            {"s": seconds, "r": replica},
        )


@pytest.mark.anyio
async def test_a_joiner_sends_nothing_until_every_live_replica_counted_it(pg: Mirror) -> None:
    """Budget 20: a alone paces at 20. b registers and is held while a still paces at 20 (a has
    not counted it); a's next claim counts b and halves a's share before it commits; b's next beat
    sees that and b starts at 10. Granted together: never above 20."""
    clock, pacers, a, b = paced_pair(pg)
    a.register()
    assert (a.admitted, pacers["a"].rate, pacers["a"].granted_until) == (True, 20.0, 50.0)
    assert await went(pacers["a"])
    b.register()
    assert (b.admitted, b.peers, pacers["b"].rate) == (False, 2, 10.0)
    assert not await went(pacers["b"])
    assert granted(pacers, clock.now()) == 20.0
    clock.advance(1.0)
    b.beat()  # a has made no beat since b joined: b still waits
    assert not b.admitted
    assert not await went(pacers["b"])
    with pg.write() as session:
        add_threads(session, ["thread_due"])
    with pg.write() as session:  # nor does it claim: its passes could not send
        assert b.claim(session, now=NOW, limit=5, due_only=True, after=None).epochs == {}
    with pg.write() as session:  # a's claim: a counted beat first
        a.claim(session, now=NOW, limit=5, due_only=True, after=None)
    assert (a.peers, pacers["a"].rate) == (2, 10.0)
    assert granted(pacers, clock.now()) == 10.0
    b.beat()
    assert (b.admitted, pacers["b"].rate, pacers["b"].granted_until) == (True, 10.0, 51.0)
    assert await went(pacers["b"])
    assert granted(pacers, clock.now()) == 20.0
    b.deregister()  # leaving: a's share grows at its next beat, not before
    assert pacers["a"].rate == 10.0
    a.renew()
    assert pacers["a"].rate == 20.0


def test_a_paused_peer_holds_a_joiner_for_at_most_one_ttl(pg: Mirror) -> None:
    """The bound README states: a peer paused (SIGSTOP) or killed still counts as behind a joiner
    past its own grant (a beat it began inside the grant may yet commit), until its heartbeat is
    one TTL old; then the joiner is admitted without it."""
    a, b = (Replica(pg, ttl=60.0, replica_id=name, budget=20.0) for name in ("a", "b"))
    a.register()
    b.register()
    assert not b.admitted
    age_heartbeat(pg, "a", 55)  # past a's grant (50 s), not yet one TTL
    b.beat()
    assert not b.admitted
    age_heartbeat(pg, "a", 61)
    b.beat()
    assert (b.admitted, b.peers) == (True, 1)


@pytest.mark.anyio
async def test_a_replica_paused_past_its_grant_joins_again(pg: Mirror) -> None:
    """a and b admitted at 10 each. a is paused (SIGSTOP) past TTL - TTL/6: its grant ends, so its
    pacer holds every request even before any beat; its next beat finds its heartbeat too old
    (b may have counted without it), so it must be counted again before it sends."""
    clock, pacers, a, b = paced_pair(pg)
    a.register()
    b.register()
    a.renew()
    b.beat()
    assert (a.admitted, b.admitted, a.peers, b.peers) == (True, True, 2, 2)
    assert granted(pacers, clock.now()) == 20.0
    clock.advance(51.0)  # a stopped: 51 s > 60 - 10 since its last beat began
    age_heartbeat(pg, "a", 51)
    assert not await went(pacers["a"])  # the grant ended: held before any beat
    b.renew()  # b's beat still counts a (younger than one TTL): b stays at 10
    assert pacers["b"].rate == 10.0
    a.renew()  # SIGCONT: a's heartbeat was 51 s old, past TTL - TTL/6
    assert not a.admitted
    assert not await went(pacers["a"])
    a.beat()  # the join time, after the beat that refreshed a's heartbeat committed
    assert not a.admitted
    b.renew()
    a.beat()
    assert a.admitted
    assert await went(pacers["a"])
    assert granted(pacers, clock.now()) == 20.0


@pytest.mark.anyio
async def test_a_replica_pruned_while_paused_registers_and_joins_again(pg: Mirror) -> None:
    """Its row gone (pruned after five TTLs): its next beat writes the row again, and it sends
    nothing until the live replicas have counted it."""
    clock, pacers, a, b = paced_pair(pg)
    a.register()
    b.register()
    a.renew()
    b.beat()
    assert (a.admitted, b.admitted) == (True, True)
    with pg.write() as session:
        session.execute(text("DELETE FROM daemon_replica WHERE replica_id = 'a'"))
    b.renew()  # b no longer counts a: its share grows to the whole budget
    assert pacers["b"].rate == 20.0
    clock.advance(300.0)
    a.renew()
    assert not a.admitted
    with pg.read() as session:
        assert session.execute(text("SELECT count(*) FROM daemon_replica")).scalar_one() == 2
    assert not await went(pacers["a"])
    a.beat()
    b.renew()
    assert pacers["b"].rate == 10.0
    a.beat()
    assert a.admitted
    assert granted(pacers, clock.now()) == 20.0
