"""The daemon's run history: finished sync runs older than ``daemon.run_history_days`` go, with
their per-thread rows, a batch per transaction; open runs, newer runs and the mirror stay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

import anyio
import pytest
from sqlmodel import select

from worker.client import ApiClient
from worker.config import DaemonSettings, Settings
from worker.daemon.jobs import Jobs
from worker.daemon.lifecycle import Daemon
from worker.daemon.metrics import DaemonMetrics
from worker.store.db import Mirror
from worker.store.models import SyncRun, SyncRunThread
from worker.store.repo import prune_runs

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _run(mirror: Mirror, *, days_ago: float, finished: bool = True, threads: int = 2) -> int:
    started = NOW - timedelta(days=days_ago)
    with mirror.write() as session:
        run = SyncRun(kind="sync", started_at=started, finished_at=started + timedelta(minutes=1))
        if not finished:
            run.finished_at = None
        session.add(run)
        session.flush()
        assert run.id is not None
        for i in range(threads):
            session.add(SyncRunThread(run_id=run.id, thread_id=f"thread_{i}", added=i))
        return run.id


def _left(mirror: Mirror) -> tuple[list[int], list[int]]:
    with mirror.read() as session:
        runs = sorted(r for r in session.exec(select(SyncRun.id)) if r is not None)
        rows = sorted(session.exec(select(SyncRunThread.run_id)))
    return runs, rows


def test_prune_deletes_old_finished_runs_with_their_thread_rows(mirror: Mirror) -> None:
    old = _run(mirror, days_ago=40)
    open_old = _run(mirror, days_ago=40, finished=False)
    recent = _run(mirror, days_ago=3)
    with mirror.write() as session:
        assert prune_runs(session, NOW - timedelta(days=30)) == 1
    runs, rows = _left(mirror)
    assert old not in runs
    assert runs == sorted([open_old, recent])
    assert rows == sorted([open_old, open_old, recent, recent])
    with mirror.write() as session:  # nothing left to prune: a no-op
        assert prune_runs(session, NOW - timedelta(days=30)) == 0


@pytest.mark.anyio
async def test_history_job_prunes_a_backlog_in_batches(mirror: Mirror) -> None:
    old = [_run(mirror, days_ago=31 + i, threads=1) for i in range(5)]
    kept = _run(mirror, days_ago=29, threads=1)
    settings = Settings(database_url=mirror.safe_url)
    jobs = Jobs(cast(ApiClient, None), mirror, settings, gate=anyio.Lock())
    jobs.prune_batch = 2  # five old runs: batches of 2, 2, 1
    assert await jobs.prune_history(now=NOW) == len(old)
    assert _left(mirror) == ([kept], [kept])
    settings_7 = Settings(database_url=mirror.safe_url, daemon=DaemonSettings(run_history_days=7))
    assert (
        await Jobs(cast(ApiClient, None), mirror, settings_7, gate=anyio.Lock()).prune_history(
            now=NOW
        )
        == 1
    )
    assert _left(mirror) == ([], [])


def test_the_daemon_schedules_the_history_job_hourly(mirror: Mirror) -> None:
    settings = Settings(database_url=mirror.safe_url)
    daemon = Daemon(settings, mirror, cast(ApiClient, None), metrics=DaemonMetrics())
    specs = {spec.name: spec.when for spec in daemon.job_specs()}
    assert "history" in specs
    assert getattr(specs["history"], "seconds", None) == 3600.0
