"""Proof (issue 21): each periodic slot runs exactly once across three replicas on PostgreSQL.

Three `threadsync run` replicas share a mirror with every periodic job on a short period: push
every second, reconcile and backup every minute (crontab jobs: the minute is the slot), history
pruning at its first hourly slot. A trigger on ``job_slot`` keeps a ledger of every claim and
every finish, with the slot, owner and epoch. The push slot's holder is SIGKILLed while its
metadata modify is provably in flight (held by the emulator's gate fault), and another replica
finishes that very slot.

Pinned: each ``(job, slot)`` finished exactly once; every job ran at least one slot; the killed
holder's slot was claimed again and finished by another replica; the edit reached the server
exactly once; each finished backup slot left exactly one snapshot, named by its slot; no thread
was walked by two replicas at once.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

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
from worker.backup import verify
from worker.backup.snapshot import snapshot_name
from worker.daemon.due import aware
from worker.emulator import Emulator, FaultRule
from worker.emulator.walks import REPLICA
from worker.outbox import set_metadata, show_metadata
from worker.store.db import Mirror

__all__ = ["emulator_url"]  # the fixture, imported to be used here

pytestmark = pytest.mark.slow

TTL = 3.0
JOBS = ("push", "reconcile", "backup", "history")


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(seed=22)


def slot_env(emulator_url: str, emulator: Emulator, db_url: str, backups: Path) -> dict[str, str]:
    return replicas_env(
        emulator_url,
        emulator,
        db_url,
        ttl=TTL,
        THREADSYNC_DAEMON__SYNC_INTERVAL="2",
        THREADSYNC_DAEMON__SYNC_JITTER="0.1",
        THREADSYNC_DAEMON__DISPATCH_INTERVAL="0.2",
        THREADSYNC_DAEMON__PUSH_INTERVAL="1",
        THREADSYNC_DAEMON__RECONCILE_CRON="* * * * *",
        THREADSYNC_DAEMON__BACKUP_CRON="* * * * *",
        THREADSYNC_BACKUP__DEST=str(backups),
        THREADSYNC_SYNC__PAGE_LIMIT="5",
    )


def keep_ledger(mirror: Mirror) -> str:
    """A trigger writing every claim and every finish of a job slot (with its outcome) to a
    ledger; the table, in a schema of its own (a backup copies the mirror's), is returned."""
    with mirror.write() as session:
        schema = session.execute(text("SELECT current_schema()")).scalar_one()
        table = f"{schema}_ledger.slot_ledger"
        session.execute(text(f"CREATE SCHEMA {schema}_ledger"))
        session.execute(
            text(
                f"CREATE TABLE {table} (seq bigserial, what text, name text,"
                " slot timestamptz, owner text, epoch bigint, outcome text)"
            )
        )
        session.execute(
            text(
                f"""
                CREATE FUNCTION slot_ledger() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                  IF NEW.lease_owner IS NOT NULL
                     AND NEW.lease_epoch IS DISTINCT FROM OLD.lease_epoch THEN
                    INSERT INTO {table} (what, name, slot, owner, epoch)
                    VALUES ('claimed', NEW.name, NEW.slot, NEW.lease_owner, NEW.lease_epoch);
                  END IF;
                  IF NEW.slot_done_at IS NOT NULL AND OLD.slot_done_at IS NULL THEN
                    INSERT INTO {table} (what, name, slot, owner, epoch, outcome)
                    VALUES ('done', NEW.name, NEW.slot, OLD.lease_owner, OLD.lease_epoch,
                            NEW.last_outcome);
                  END IF;
                  RETURN NULL;
                END $$
                """
            )
        )
        session.execute(
            text(
                "CREATE TRIGGER slot_ledger AFTER UPDATE ON job_slot"
                " FOR EACH ROW EXECUTE FUNCTION slot_ledger()"
            )
        )
    return table


Entry = tuple[str, str, datetime, str, int, str | None]  # what, job, slot, owner, epoch, outcome


def read_ledger(mirror: Mirror, table: str) -> list[Entry]:
    with mirror.read() as session:
        rows = session.execute(
            text(f"SELECT what, name, slot, owner, epoch, outcome FROM {table} ORDER BY seq")
        ).all()
    entries = []
    for what, name, slot, owner, epoch, outcome in rows:
        when = aware(slot)
        assert when is not None
        entries.append((str(what), str(name), when, str(owner), int(epoch), outcome))
    return entries


def done(entries: list[Entry]) -> list[tuple[str, datetime]]:
    return [(e[1], e[2]) for e in entries if e[0] == "done"]


def test_each_periodic_slot_runs_once_across_replicas_and_a_killed_holders_slot_is_finished(
    emulator: Emulator, emulator_url: str, pg_url: str, tmp_path: Path
) -> None:
    ids = emulator.seed(seed=3, threads=30, messages=8)
    track(pg_url, ids)
    mirror = Mirror(pg_url)
    table = keep_ledger(mirror)

    def ledger(mirror: Mirror) -> list[Entry]:
        return read_ledger(mirror, table)

    backups = tmp_path / "backups"
    env = slot_env(emulator_url, emulator, pg_url, backups)
    daemons = [DaemonProcess(env, tmp_path / f"r{i}.log") for i in range(3)]
    try:
        names = [str(d.wait_event("daemon.replica_registered")["replica"]) for d in daemons]
        by_name = dict(zip(names, daemons, strict=True))
        wait_for(lambda: exported(mirror) == truth(emulator), 120, "first sync", daemons[0])

        # An edit to push; the push slot's holder is SIGKILLed with its modify in flight.
        thread = ids[0]
        message = truth(emulator)[thread][0]
        set_metadata(mirror, thread, message["id"], set={"label": "refund"})
        emulator.add_fault(FaultRule("gate", route="modify", thread_id=thread))
        held = emulator.gate.wait_held(60)
        found = REPLICA.search(held.agent)
        assert found is not None
        victim = found.group(1)
        claims = [e for e in ledger(mirror) if e[0] == "claimed" and e[1] == "push"]
        _, _, killed_slot, owner, killed_epoch, _ = claims[-1]
        assert owner == victim  # the modify in flight is the current push slot holder's
        by_name[victim].proc.send_signal(signal.SIGKILL)
        by_name[victim].proc.wait(timeout=10)
        emulator.gate.release()
        survivors = [d for n, d in by_name.items() if n != victim]

        def finisher(job: str) -> Callable[[], bool]:
            return lambda: any(j == job for j, _ in done(ledger(mirror)))

        wait_for(
            lambda: ("push", killed_slot) in done(ledger(mirror)),
            60,
            "the killed holder's push slot finished",
            survivors[0],
        )
        for job in ("reconcile", "backup", "history"):
            wait_for(finisher(job), 150, f"a {job} slot finished", survivors[0])
        wait_for(
            lambda: show_metadata(mirror, thread, message["id"]).state == "applied",
            30,
            "the edit applied",
            survivors[0],
        )
        for daemon in survivors:
            assert daemon.terminate(timeout=30) == 0

        entries = ledger(mirror)
        ends = Counter(done(entries))
        assert ends, entries
        assert [slot for slot, n in ends.items() if n != 1] == []  # each slot finished once
        assert {job for job, _ in ends} == set(JOBS)
        assert [e for e in entries if e[0] == "done" and e[5] != "ok"] == []  # and ran well
        # The killed holder's slot: claimed by it, claimed again and finished by another.
        last_of_killed = [e for e in entries if e[0] == "done" and e[1:3] == ("push", killed_slot)]
        assert len(last_of_killed) == 1
        assert last_of_killed[0][3] != victim
        assert last_of_killed[0][4] > killed_epoch
        # A slot claimed and never finished can only be a job's last one (handed back on
        # SIGTERM); every earlier one was finished.
        last = {job: max(e[2] for e in entries if e[1] == job) for job in JOBS}
        claimed = {(e[1], e[2]) for e in entries if e[0] == "claimed"}
        assert {(j, s) for j, s in claimed - set(ends) if s != last[j]} == set()

        # The edit reached the server once (the killed holder's modify, or its successor's).
        applied = [
            c
            for c in emulator.stats()["modify_calls"]
            if c["applied"] and c["message_id"] == message["id"]
        ]
        assert len(applied) == 1, applied
        assert emulator.message(thread, message["id"]).data["metadata"]["label"] == "refund"
        # One snapshot per finished backup slot, named by it, and nothing else published.
        published = sorted(p.name for p in backups.iterdir() if p.name.startswith("threadsync-"))
        backed_up = sorted(snapshot_name(s) for j, s in ends if j == "backup")
        claimed_backups = {snapshot_name(s) for j, s in claimed if j == "backup"}
        assert set(backed_up) <= set(published) <= claimed_backups, (backed_up, published)
        assert len(published) == len(set(published))
        for name in backed_up:
            assert verify(backups / name).ok
        assert emulator.walks.overlaps() == []
    finally:
        for daemon in daemons:
            daemon.close()
        with mirror.write() as session:
            session.execute(text(f"DROP SCHEMA {table.split('.')[0]} CASCADE"))
        mirror.dispose()
