"""The daemon on a configuration error: nothing marked, /readyz and `threadsync check` say why,
dispatches back off, and the first pass that runs through clears it (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from worker import logs
from worker.cli.app import app
from worker.config import DaemonSettings, RetrySettings, Settings, SyncSettings
from worker.daemon.heartbeat import read_problem, write_beat
from worker.daemon.lifecycle import Daemon
from worker.daemon.metrics import DaemonMetrics
from worker.emulator import Emulator, ManualClock
from worker.store.db import Mirror
from worker.store.repo import add_threads
from worker.testing import emulated_client

pytestmark = pytest.mark.anyio


class Monotonic:
    def __init__(self) -> None:
        self.at = 1000.0

    def __call__(self) -> float:
        return self.at


def state_rows(mirror: Mirror) -> dict[str, list[Any]]:
    with mirror.read() as session:
        return {
            table: [tuple(r) for r in session.execute(text(f"SELECT * FROM {table} ORDER BY 1"))]
            for table in ("message", "tracked_thread", "sync_state")
        }


def check(mirror: Mirror) -> Any:
    result = CliRunner().invoke(app, ["--database-url", mirror.safe_url, "check"])
    logs.configure()  # the command logged to the runner's stream, closed now
    return result


def requests(emulator: Emulator) -> int:
    return sum(n for by in emulator.stats()["routes"].values() for n in by.values())


async def test_a_wrong_key_makes_the_daemon_unready_until_a_pass_succeeds(
    mirror: Mirror,
) -> None:
    emulator = Emulator(clock=ManualClock(), seed=3)
    ids = emulator.seed(seed=3, threads=6, messages=4)
    with mirror.write() as session:
        add_threads(session, ids)
    settings = Settings(
        database_url=mirror.safe_url,
        daemon=DaemonSettings(dispatch_interval=5.0, sync_interval=300.0, heartbeat_interval=60),
        sync=SyncSettings(concurrency=2),
    )
    key = emulator.api_key
    async with emulated_client(emulator, retry=RetrySettings(max_attempts=2)) as client:
        daemon = Daemon(settings, mirror, client, metrics=DaemonMetrics())
        clock = Monotonic()
        daemon.dispatcher.clock = clock
        await daemon.beat()
        before = state_rows(mirror)
        emulator.api_key = "sk-rotated-elsewhere"  # the daemon's key no longer works
        result = await daemon.dispatcher.dispatch_once()
        assert result.problem is not None
        assert requests(emulator) <= 2  # the concurrency, not the six threads
        reason = daemon.readiness()
        assert reason is not None
        assert reason.startswith("configuration error:")
        assert "AZURE_OPENAI_API_KEY" in reason
        assert state_rows(mirror) == before  # nothing marked, nothing rescheduled, no lease
        problem = read_problem(mirror)
        assert problem is not None
        assert "AZURE_OPENAI_API_KEY" in problem
        write_beat(mirror, datetime.now(UTC))
        unhealthy = check(mirror)
        assert unhealthy.exit_code == 1
        assert "configuration error" in unhealthy.output
        assert "AZURE_OPENAI_API_KEY" in unhealthy.output

        emulator.reset_stats()
        await daemon.dispatcher.dispatch_once()  # within the back-off: not even one request
        assert requests(emulator) == 0

        emulator.api_key = key  # fixed (or the network came back)
        clock.at += 3600
        result = await daemon.dispatcher.dispatch_once()
        assert result.problem is None
        assert result.finished == 6
        assert daemon.readiness() is None
        assert read_problem(mirror) is None
        write_beat(mirror, datetime.now(UTC))
        assert check(mirror).exit_code == 0
