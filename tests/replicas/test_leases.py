"""Replicas mode, in-process on PostgreSQL: the claim, the fence, renewal, job slots, the lock."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import orjson
import pytest
from sqlalchemy import Engine, create_engine, text
from typer.testing import CliRunner

from worker.cli.app import app
from worker.config import DaemonSettings, Settings
from worker.daemon.due import claim_leases, release
from worker.daemon.fence import Fence, LeaseLost, check_lease
from worker.daemon.lifecycle import run_daemon
from worker.daemon.lock import daemon_lock
from worker.daemon.metrics import DaemonMetrics
from worker.daemon.replicas import Replica, new_replica_id, replica_rows
from worker.daemon.slots import claim_slot
from worker.emulator import Emulator
from worker.errors import ConfigError
from worker.store.db import Mirror
from worker.store.models import MirrorMeta, TrackedThread
from worker.store.repo import add_threads
from worker.sync.runner import sync_threads
from worker.testing import emulated_client

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
IDS = [f"thread_{i:02d}" for i in range(6)]  # ids sort before the emulator's


@pytest.fixture
def pg(pg_url: str) -> Iterator[Mirror]:
    mirror = Mirror(pg_url)
    with mirror.write() as session:
        add_threads(session, IDS)
    yield mirror
    mirror.dispose()


def claim(mirror: Mirror, owner: str, limit: int = 100, lease: float = 60.0) -> dict[str, int]:
    with mirror.write() as session:
        return claim_leases(
            session, now=NOW, owner=owner, lease=lease, limit=limit, fenced=True
        ).epochs


def expire(mirror: Mirror, ids: list[str]) -> None:
    """What the database clock does to an unrenewed lease after its TTL."""
    with mirror.write() as session:
        session.execute(
            text(
                "UPDATE tracked_thread SET lease_until = now() - interval '1 second'"
                " WHERE thread_id = ANY(:ids)"
            ),
            {"ids": ids},
        )


def test_replica_ids_are_unique_per_start_even_with_the_same_host_and_pid() -> None:
    ids = {new_replica_id("box", 1) for _ in range(50)}
    assert len(ids) == 50
    assert all(i.startswith("box:1:") for i in ids)


def test_one_statement_claims_with_owner_db_clock_expiry_and_a_new_epoch(pg: Mirror) -> None:
    first = claim(pg, "a", limit=4)
    assert list(first) == IDS[:4]
    assert set(first.values()) == {1}
    with pg.read() as session:
        rows = session.execute(
            text(
                "SELECT thread_id, lease_owner, extract(epoch FROM lease_until - now())"
                " FROM tracked_thread WHERE lease_owner IS NOT NULL"
            )
        ).all()
    assert {r[0] for r in rows} == set(IDS[:4])
    # NOW (the app's clock, 2025) is ignored for the lease: it runs from the database's now().
    assert all(r[1] == "a" and 50 < float(r[2]) <= 60 for r in rows)
    assert claim(pg, "b") == dict.fromkeys(IDS[4:], 1)  # held leases are skipped
    expire(pg, IDS[:2])
    with pg.write() as session:
        taken = claim_leases(session, now=NOW, owner="b", lease=60.0, limit=100, fenced=True)
    assert taken.epochs == dict.fromkeys(IDS[:2], 2)
    assert taken.taken_over == 2


def test_skip_locked_claims_are_disjoint_while_a_claim_is_open(pg: Mirror) -> None:
    with pg.write() as first:
        mine = claim_leases(first, now=NOW, owner="a", lease=60, limit=3, fenced=True).epochs
        theirs = claim(pg, "b")  # another transaction, while the first is still open
    assert set(mine).isdisjoint(theirs)
    assert set(mine) | set(theirs) == set(IDS)


def test_fence_rejects_every_write_after_the_lease_was_lost(pg: Mirror) -> None:
    epochs = claim(pg, "a", limit=1)
    thread = IDS[0]
    with pg.write() as session:
        check_lease(session, thread, "a", epochs[thread], 60.0)  # held: passes, extends
    expire(pg, [thread])
    assert claim(pg, "b", limit=1) == {thread: 2}  # taken over
    fence = Fence("a", 60.0, epochs, trusted_until=float("inf"))

    def write_after_loss() -> None:
        with pg.write() as session:
            session.add(MirrorMeta(key="written.after.loss", value="x"))
            session.flush()
            fence.guard(session, thread)

    with pytest.raises(LeaseLost):
        write_after_loss()
    with pg.read() as session:
        assert session.get(MirrorMeta, "written.after.loss") is None  # rolled back
    assert fence.lost == {thread}
    with pytest.raises(LeaseLost):
        fence.ensure(thread)  # and no further request is sent for it
    with pg.write() as session:
        assert not fence.holds(session, thread)
        assert release(session, [thread], "a", epochs) == 0  # b's lease stays b's
    with pg.read() as session:
        row = session.get(TrackedThread, thread)
        assert row is not None
        assert row.lease_owner == "b"


def test_an_untrusted_fence_refuses_requests_before_the_database_says_so(pg: Mirror) -> None:
    epochs = claim(pg, "a", limit=1)
    now = [100.0]
    fence = Fence("a", 60.0, epochs, trusted_until=150.0, clock=lambda: now[0])
    fence.ensure(IDS[0])
    now[0] = 150.0  # renewals failed (or the process was paused) past the trust window
    with pytest.raises(LeaseLost):
        fence.ensure(IDS[0])


def test_bulk_renewal_keeps_held_leases_and_reports_taken_over_ones(pg: Mirror) -> None:
    metrics = DaemonMetrics()
    replica = Replica(pg, ttl=30.0, metrics=metrics, replica_id="r1")
    replica.register()
    with pg.write() as session:
        fence = replica.claim(session, now=NOW, limit=3, due_only=True, after=None)
    replica.track(fence)
    expire(pg, [IDS[0], IDS[1]])
    claim(pg, "other", limit=1)  # takes IDS[0] over
    replica.renew()
    assert fence.lost == {IDS[0]}
    assert set(fence.held()) == {IDS[1], IDS[2]}
    with pg.read() as session:
        left = session.execute(
            text(
                "SELECT thread_id FROM tracked_thread WHERE lease_owner = 'r1'"
                " AND lease_until > now() + interval '25 seconds'"
            )
        ).scalars()
        assert set(left) == {IDS[1], IDS[2]}  # IDS[1] expired but nobody took it: renewed
    text_metrics = metrics.render().decode()
    assert "threadsync_leases_lost_total 1.0" in text_metrics
    assert "threadsync_lease_renewals_total 1.0" in text_metrics
    assert "threadsync_lease_claims_total 3.0" in text_metrics
    assert "threadsync_leases_held 2.0" in text_metrics
    replica.deregister()
    with pg.read() as session:
        owners = session.execute(
            text("SELECT count(*) FROM tracked_thread WHERE lease_owner = 'r1'")
        )
        assert owners.scalar_one() == 0
        assert session.execute(text("SELECT count(*) FROM daemon_replica")).scalar_one() == 0


def test_a_job_slot_runs_once_and_an_orphaned_slot_is_resumed_not_skipped(pg: Mirror) -> None:
    with pg.write() as session:
        first = claim_slot(session, "push", "a", 3600.0, 60.0)
    assert first is not None
    epoch, slot = first
    with pg.write() as session:
        assert claim_slot(session, "push", "b", 3600.0, 60.0) is None  # a holds it
    # a dies: its lease expires unfinished; b resumes that very slot
    with pg.write() as session:
        session.execute(text("UPDATE job_slot SET lease_until = now() - interval '1 second'"))
    with pg.write() as session:
        resumed = claim_slot(session, "push", "b", 3600.0, 60.0)
    assert resumed == (epoch + 1, slot)
    done = text(
        "UPDATE job_slot SET slot_done_at = now(), lease_owner = NULL, lease_until = NULL"
        " WHERE name = 'push' AND lease_owner = :o AND lease_epoch = :e"
    )
    with pg.write() as session:  # a comes back: its end is fenced out
        assert session.connection().execute(done, {"o": "a", "e": epoch}).rowcount == 0
    with pg.write() as session:
        assert session.connection().execute(done, {"o": "b", "e": epoch + 1}).rowcount == 1
    with pg.write() as session:
        assert claim_slot(session, "push", "c", 3600.0, 60.0) is None  # this slot is done


def test_replicas_mode_is_refused_on_sqlite_before_a_file_is_made(tmp_path: Path) -> None:
    db = tmp_path / "mirror.db"
    settings = Settings(database_url=f"sqlite:///{db}", daemon=DaemonSettings(mode="replicas"))
    with pytest.raises(ConfigError, match=r"daemon.mode = replicas needs a PostgreSQL mirror"):
        anyio.run(run_daemon, settings)
    assert not db.exists()


def terminate(admin: Engine, pid: int) -> None:
    """End a backend and wait until it is gone (the signal is asynchronous)."""
    with admin.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        alive = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p")
        while conn.execute(alive, {"p": pid}).scalar_one():
            conn.rollback()  # a fresh snapshot of pg_stat_activity each time
            time.sleep(0.01)


def test_single_mode_lock_lost_with_its_session_is_taken_again_or_reported(
    pg: Mirror, pg_url: str
) -> None:
    admin = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with daemon_lock(pg) as watch:
        assert watch.check() is None
        assert watch.conn is not None
        pid = watch.conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        terminate(admin, pid)  # what a PostgreSQL restart does to the session
        assert watch.check() is None  # noticed and taken again on a new session
        assert watch.conn is not None
        new_pid = watch.conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        assert new_pid != pid
        other = Mirror(pg_url)
        try:
            terminate(admin, new_pid)
            with daemon_lock(other):  # another daemon got the lock in between
                problem = watch.check()
                assert problem is not None
                assert "lost and cannot be taken again" in problem
        finally:
            other.dispose()
    admin.dispose()


def test_a_single_daemon_claim_leaves_epochs_alone(pg: Mirror) -> None:
    with pg.write() as session:
        assert list(claim_leases(session, now=NOW, owner="solo", lease=900.0, limit=2).epochs)
    with pg.read() as session:
        epochs = session.execute(text("SELECT DISTINCT lease_epoch FROM tracked_thread")).scalars()
        assert list(epochs) == [0]


@pytest.mark.anyio
async def test_a_pass_under_a_lost_lease_writes_nothing_and_reports_lost(pg: Mirror) -> None:
    emulator = Emulator(seed=5)
    threads = emulator.seed(seed=5, threads=2, messages=30)
    with pg.write() as session:
        add_threads(session, threads)
    epochs = claim(pg, "a")
    expire(pg, [threads[0]])
    claim(pg, "b")  # threads[0] is b's now; threads[1] stays a's
    fence = Fence("a", 60.0, {t: epochs[t] for t in threads}, trusted_until=float("inf"))
    async with emulated_client(emulator) as client:
        report = await sync_threads(client, pg, thread_ids=threads, page_limit=10, fence=fence)
    results = {o.thread_id: o.result for o in report.outcomes}
    assert results == {threads[0]: "lost", threads[1]: "synced"}
    with pg.read() as session:
        stored = dict(
            session.execute(
                text("SELECT thread_id, count(*) FROM message GROUP BY thread_id")
            ).all()
        )
        closed = session.execute(
            text("SELECT last_sync_at FROM sync_state WHERE thread_id = :t"), {"t": threads[0]}
        ).scalar_one_or_none()
    assert stored == {threads[1]: 30}  # not one page of the lost thread
    assert closed is None  # nor its closing state: b writes that


def test_status_shows_which_replica_holds_which_thread(pg: Mirror) -> None:
    before = datetime.now(UTC)
    replica = Replica(pg, ttl=60.0, replica_id="host:1:feedbeef")
    replica.register()
    with pg.write() as session:
        fence = replica.claim(session, now=NOW, limit=2, due_only=True, after=None)
    result = CliRunner().invoke(app, ["--database-url", pg.safe_url, "status", "--json"])
    assert result.exit_code == 0, result.output
    held = {
        row["thread_id"]: row["held_by"]
        for row in (orjson.loads(line) for line in result.stdout.splitlines())
    }
    assert held == {t: ("host:1:feedbeef" if t in fence.epochs else None) for t in IDS}
    table = CliRunner().invoke(app, ["--database-url", pg.safe_url, "status"])
    assert "held by" in table.stdout
    assert "replica host:1:feedbeef: 2 threads held" in table.stdout
    with pg.read() as session:
        (row,) = replica_rows(session)
    assert (row.replica_id, row.threads, row.pid) == ("host:1:feedbeef", 2, os.getpid())
    assert before <= row.started_at <= datetime.now(UTC)


def test_a_new_slot_after_a_finished_one_can_be_orphaned_and_resumed(pg: Mirror) -> None:
    """The second slot's claim clears the first's end, so its own death is noticed."""
    with pg.write() as session:
        session.execute(
            text(
                "INSERT INTO job_slot (name, lease_epoch, slot, slot_done_at)"
                " VALUES ('history', 4, now() - interval '2 hours', now() - interval '2 hours')"
            )
        )
    with pg.write() as session:
        claimed = claim_slot(session, "history", "a", 3600.0, 60.0)
    assert claimed is not None
    with pg.write() as session:
        session.execute(text("UPDATE job_slot SET lease_until = now() - interval '1 second'"))
    with pg.read() as session:
        orphans = session.execute(
            text("SELECT name FROM job_slot WHERE slot_done_at IS NULL")
        ).scalars()
        assert list(orphans) == ["history"]
    with pg.write() as session:
        assert claim_slot(session, "history", "b", 3600.0, 60.0) == (claimed[0] + 1, claimed[1])


@pytest.mark.anyio
async def test_a_404_under_a_lost_lease_marks_nothing(pg: Mirror) -> None:
    emulator = Emulator(seed=6)
    threads = emulator.seed(seed=6, threads=2, messages=5)
    with pg.write() as session:
        add_threads(session, threads)
    epochs = claim(pg, "a")
    emulator.delete_thread(threads[0])
    expire(pg, [threads[0]])
    claim(pg, "b")
    fence = Fence("a", 60.0, {t: epochs[t] for t in threads}, trusted_until=float("inf"))
    async with emulated_client(emulator) as client:
        await sync_threads(client, pg, thread_ids=threads, fence=fence)
    assert judged(pg, threads[0]) is None  # b decides what the 404 means, not a
    # the same run under a held lease does mark it
    fence_b = Fence("b", 60.0, {threads[0]: epochs[threads[0]] + 1}, trusted_until=float("inf"))
    async with emulated_client(emulator) as client:
        await sync_threads(client, pg, thread_ids=threads, fence=fence_b)
    assert judged(pg, threads[0]) is not None


def judged(mirror: Mirror, thread_id: str) -> object:
    """When a run last wrote the thread's 404 verdict (None: never)."""
    with mirror.read() as session:
        return session.execute(
            text("SELECT last_sync_at FROM sync_state WHERE thread_id = :t"), {"t": thread_id}
        ).scalar_one_or_none()
