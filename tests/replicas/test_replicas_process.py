"""Proof (issue 21): three `threadsync run` replicas on one PostgreSQL mirror, with faults.

The emulator serves 300 threads on a loopback socket with 503s and 429s on; three replicas share
the mirror (`daemon.mode = replicas`, TTL 3 s, renewed every second). One is SIGKILLed in the
middle of a page, another SIGSTOPped for longer than the TTL and then SIGCONTed; "in the
middle" is an event, not a count: the emulator's gate fault holds that replica's next list
request (keyed on its `User-Agent: ... replica/<id>`) and says so, and the signal is sent while
it is held. Pinned: the export ends equal to the truth; the emulator saw no thread walked by two
replicas at once; the
paused replica found its leases lost; a trigger shows every message row was written by the
replica holding its thread's lease in that transaction; every periodic slot finished
exactly once. Then a rolling restart, one replica at a time: no thread waits longer than one TTL
plus its interval.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.harness import (
    DaemonProcess,
    emulator_url,
    exported,
    replicas_env,
    track,
    truth,
    wait_for,
)
from worker.emulator import Emulator, FaultRule
from worker.emulator.faults import HeldRequest
from worker.store.db import Mirror

__all__ = ["emulator_url"]  # the fixture, imported to be used here

pytestmark = pytest.mark.slow

TTL = 3.0
SYNC_INTERVAL = 2.0
JITTER = 0.1
DISPATCH = 0.2
PUSH = 1.0


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(seed=21)


def replica_env(emulator_url: str, emulator: Emulator, db_url: str) -> dict[str, str]:
    return replicas_env(
        emulator_url,
        emulator,
        db_url,
        ttl=TTL,
        THREADSYNC_DAEMON__SYNC_INTERVAL=str(SYNC_INTERVAL),
        THREADSYNC_DAEMON__SYNC_JITTER=str(JITTER),
        THREADSYNC_DAEMON__DISPATCH_INTERVAL=str(DISPATCH),
        THREADSYNC_DAEMON__PUSH_INTERVAL=str(PUSH),
        THREADSYNC_SYNC__PAGE_LIMIT="5",
        THREADSYNC_SYNC__CONCURRENCY="4",
    )


def start(env: dict[str, str], tmp_path: Path, name: str) -> DaemonProcess:
    return DaemonProcess(env, tmp_path / f"{name}.log")


def replica_id(daemon: DaemonProcess) -> str:
    return str(daemon.wait_event("daemon.replica_registered")["replica"])


def events(daemons: list[DaemonProcess], name: str) -> list[dict[str, Any]]:
    return [e for d in daemons for e in d.events() if e.get("event") == name]


def slot_ends(daemons: list[DaemonProcess]) -> list[tuple[str, str]]:
    return [(e["job"], e["slot"]) for e in events(daemons, "daemon.slot_done")]


def test_three_replicas_kill_pause_converge_without_overlap_and_slots_run_once(
    emulator: Emulator, emulator_url: str, pg_url: str, tmp_path: Path
) -> None:
    ids = emulator.seed(seed=1, threads=300, messages=25)
    track(pg_url, ids)
    audit_writes(pg_url)
    emulator.add_fault(FaultRule("503", times=None, probability=0.05, route="list"))
    emulator.add_fault(FaultRule("429", times=6, retry_after=0.1))
    # Each replica connects under its own application_name, so the audit knows who wrote.
    daemons = [
        start(
            replica_env(emulator_url, emulator, f"{pg_url}&application_name=r{i}"),
            tmp_path,
            f"r{i}",
        )
        for i in range(3)
    ]
    mirror = Mirror(pg_url)
    try:
        names = [replica_id(d) for d in daemons]
        assert len(set(names)) == 3
        killed, paused, steady = daemons

        # SIGKILL the first while a page of it is provably in flight (held by the gate): its
        # page transactions roll back whole, its threads are taken over after the TTL.
        wait_for(lambda: _walked_by(emulator, names[0]) >= 5, 60, "the first walking", killed)
        in_flight = hold_next_page(emulator, mirror, names[0])
        killed.proc.send_signal(signal.SIGKILL)
        killed.proc.wait(timeout=10)
        emulator.gate.release()  # answered to nobody; the walk ends before any takeover

        # SIGSTOP the second while a page of it is in flight, for twice the TTL: the page is
        # answered while it sleeps, and its write, when it wakes, finds the lease lost.
        wait_for(lambda: _walked_by(emulator, names[1]) >= 5, 60, "the second walking", paused)
        paused_page = hold_next_page(emulator, mirror, names[1])
        paused.proc.send_signal(signal.SIGSTOP)
        emulator.gate.release()
        time.sleep(2 * TTL)  # the pause itself is the fault under test
        emulator.append_messages(ids[5], n=3)  # news while it sleeps
        paused.proc.send_signal(signal.SIGCONT)

        wait_for(
            lambda: exported(mirror) == truth(emulator),
            180,
            "the export equal to the truth",
            steady,
        )
        wait_for(lambda: len(slot_ends([steady, paused])) >= 3, 30, "push slots", steady)

        overlaps = emulator.walks.overlaps()
        assert overlaps == [], overlaps[:3]
        # The held pages' threads (leased by the replica killed or paused over them) ended
        # equal to the truth, finished by another replica.
        for page in (in_flight, paused_page):
            assert page.thread_id is not None
            assert exported(mirror)[page.thread_id] == truth(emulator)[page.thread_id]
        # Every message row written (inserted, changed, tombstoned) was written by the replica
        # holding the thread's lease in that very transaction: no write under a lost lease.
        by_app = {f"r{i}": name for i, name in enumerate(names)}
        writes = audited(mirror)
        assert writes, "no message write was audited"
        foreign = [(app, t, owner) for app, t, owner in writes if owner != by_app[app]]
        assert foreign == [], foreign[:5]
        # The paused replica came back holding leases the others had taken over: it found them
        # lost, by the trust window (no request sent) or the fenced write (nothing written).
        lost = events([paused], "daemon.leases_lost") + _lost_passes(paused)
        assert lost, "the paused replica never noticed its leases were taken over"
        takeovers = events(daemons, "daemon.batch_finished")
        assert takeovers  # the survivors kept dispatching

        ends = slot_ends(daemons)
        assert len(ends) == len(set(ends)), sorted(ends)  # each (job, slot) finished once
        started = {(e["job"], e["slot"]) for e in events(daemons, "daemon.slot_started")}
        wait_for(
            lambda: _unfinished(started, slot_ends(daemons)) <= 2,  # the current ones
            30,
            "unfinished slots resumed",
        )
        for daemon in (paused, steady):
            assert daemon.terminate(timeout=30) == 0
    finally:
        for daemon in daemons:
            if daemon.proc.poll() is None:
                os.kill(daemon.proc.pid, signal.SIGCONT)
            daemon.close()
        mirror.dispose()


def test_rolling_restart_hands_threads_over_within_a_ttl_plus_an_interval(
    emulator: Emulator, emulator_url: str, pg_url: str, tmp_path: Path
) -> None:
    ids = emulator.seed(seed=2, threads=40, messages=8)
    track(pg_url, ids)
    env = replica_env(emulator_url, emulator, pg_url)
    daemons = [start(env, tmp_path, f"old{i}") for i in range(3)]
    mirror = Mirror(pg_url)
    try:
        for d in daemons:
            replica_id(d)
        wait_for(lambda: exported(mirror) == truth(emulator), 120, "first sync", daemons[0])
        window_start = time.monotonic()
        for i, old in enumerate(list(daemons)):
            new = start(env, tmp_path, f"new{i}")
            replica_id(new)
            assert old.terminate(timeout=30) == 0  # hands its threads back at once
            daemons.append(new)
            time.sleep(SYNC_INTERVAL)  # a deploy's pace: one replica per interval
        window_end = time.monotonic()
        time.sleep(TTL + SYNC_INTERVAL)
        bound = TTL + SYNC_INTERVAL * (1 + JITTER) + DISPATCH
        worst = {t: _worst_gap(emulator, t, window_start, window_end) for t in ids}
        late = {t: round(g, 2) for t, g in worst.items() if g > bound}
        assert late == {}, f"bound {bound:.1f} s: {late}"
        assert emulator.walks.overlaps() == []
    finally:
        for daemon in daemons:
            daemon.close()
        mirror.dispose()


def hold_next_page(emulator: Emulator, mirror: Mirror, replica: str) -> HeldRequest:
    """Hold ``replica``'s next list request at the emulator; return once it is held, the page
    provably in flight for a thread whose lease ``replica`` holds."""
    emulator.add_fault(FaultRule("gate", route="list", agent=f"replica/{replica}"))
    held = emulator.gate.wait_held(60)
    assert f"replica/{replica}" in held.agent
    with mirror.read() as session:
        owner = session.execute(
            text("SELECT lease_owner FROM tracked_thread WHERE thread_id = :t"),
            {"t": held.thread_id},
        ).scalar_one()
    assert owner == replica, (held.thread_id, owner)
    return held


def audit_writes(db_url: str) -> None:
    """A trigger recording, for each message row written, the writer's application_name and
    the thread's lease owner as that transaction sees it."""
    mirror = Mirror(db_url)
    with mirror.write() as session:
        session.execute(text("CREATE TABLE write_audit (app text, thread_id text, owner text)"))
        session.execute(
            text(
                """
                CREATE FUNCTION audit_write() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                  INSERT INTO write_audit
                  SELECT current_setting('application_name'), NEW.thread_id, t.lease_owner
                  FROM tracked_thread t WHERE t.thread_id = NEW.thread_id;
                  RETURN NULL;
                END $$
                """
            )
        )
        session.execute(
            text(
                "CREATE TRIGGER audit AFTER INSERT OR UPDATE ON message"
                " FOR EACH ROW EXECUTE FUNCTION audit_write()"
            )
        )
    mirror.dispose()


def audited(mirror: Mirror) -> list[tuple[str, str, str | None]]:
    with mirror.read() as session:
        rows = session.execute(text("SELECT app, thread_id, owner FROM write_audit")).all()
    return [(r[0], r[1], r[2]) for r in rows]


def _walked_by(emulator: Emulator, replica: str) -> int:
    return sum(
        1
        for t in list(emulator.walks._spans)
        for w in emulator.walks.walks(t)
        if w.replica == replica
    )


def _lost_passes(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return [
        e
        for e in daemon.events()
        if e.get("event") == "sync.thread_failed" and e.get("result") == "lost"
    ]


def _unfinished(started: set[tuple[str, str]], ends: list[tuple[str, str]]) -> int:
    return len(started - set(ends))


def _worst_gap(emulator: Emulator, thread_id: str, start: float, end: float) -> float:
    """The longest time the thread went unwalked after a walk that ended in ``[start, end]``."""
    walks = emulator.walks.walks(thread_id)
    gaps = [
        (b.start if b is not None else float("inf")) - a.end
        for a, b in zip(walks, [*walks[1:], None], strict=True)
        if start <= a.end <= end
    ]
    return max(gaps, default=0.0)
