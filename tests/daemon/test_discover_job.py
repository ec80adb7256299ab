"""The daemon discovers new Foundry threads on `daemon.discover_interval`; elsewhere that key is a
configuration error at start."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner

from tests.daemon.test_parts import until
from worker.cli.app import app
from worker.config import ApiSettings, DaemonSettings, Profile, Settings
from worker.daemon.lifecycle import Daemon
from worker.daemon.metrics import DaemonMetrics
from worker.emulator import Emulator, ManualClock
from worker.store.db import Mirror
from worker.store.repo import pause_many, thread_statuses, track_many
from worker.testing import emulated_client

ROUTE = "GET /api/projects/{project}/threads"


def _tracked(mirror: Mirror) -> dict[str, str]:
    with mirror.read() as session:
        return {s.thread_id: s.state for s in thread_statuses(session)}


def _messages(mirror: Mirror) -> int:
    with mirror.read() as session:
        return sum(s.messages for s in thread_statuses(session))


@pytest.mark.anyio
async def test_the_daemon_discovers_new_threads_and_mirrors_them(mirror: Mirror) -> None:
    """Untracked threads are found at start and synced; a thread made later is found by the next
    discovery, which costs one request; a paused thread stays paused."""
    clock = ManualClock()
    emulator = Emulator(clock=clock, seed=9)
    first = emulator.seed(seed=9, threads=3, messages=4)
    with mirror.write() as session:
        track_many(session, [first[0]])
        pause_many(session, [first[0]])
    settings = Settings(
        database_url=mirror.safe_url,
        api=ApiSettings(profile=Profile.FOUNDRY),
        daemon=DaemonSettings(dispatch_interval=0.05, discover_interval=0.05, sync_interval=60),
    )
    stop = anyio.Event()
    async with emulated_client(emulator, profile=Profile.FOUNDRY) as client:
        daemon = Daemon(settings, mirror, client, metrics=DaemonMetrics())
        assert "discover" in [s.name for s in daemon.job_specs()]
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.serve, stop)
            with anyio.fail_after(20):

                async def found_first() -> bool:
                    return _messages(mirror) == 8  # the two new threads, four messages each

                await until(found_first)
                clock.advance(5)
                emulator.reset_stats()
                later = emulator.create_thread()["id"]
                emulator.append_messages(later, n=2)

                async def found_later() -> bool:
                    return later in _tracked(mirror) and _messages(mirror) == 10

                await until(found_later)
                listings = emulator.stats()["routes"][ROUTE]
            stop.set()
    assert daemon.jobs.discovered_since is not None
    assert sum(listings.values()) >= 1
    assert _tracked(mirror)[first[0]] == "paused"


@pytest.mark.anyio
async def test_later_discoveries_stop_at_the_newest_thread_already_seen(mirror: Mirror) -> None:
    """After a first full walk, each discovery lists newest first and stops at once."""
    clock = ManualClock()
    emulator = Emulator(clock=clock, seed=4)
    for _ in range(150):
        emulator.create_thread()
        clock.advance(1)
    settings = Settings(
        database_url=mirror.safe_url,
        api=ApiSettings(profile=Profile.FOUNDRY),
        daemon=DaemonSettings(discover_interval=60),
    )
    async with emulated_client(emulator, profile=Profile.FOUNDRY) as client:
        daemon = Daemon(settings, mirror, client, metrics=DaemonMetrics())
        assert await daemon.jobs.discover() == 150
        assert emulator.stats()["routes"][ROUTE] == {"200": 2}
        emulator.reset_stats()
        assert await daemon.jobs.discover() == 0
        assert emulator.stats()["routes"][ROUTE] == {"200": 1}
        emulator.create_thread()
        assert await daemon.jobs.discover() == 1
    assert len(_tracked(mirror)) == 151


@pytest.mark.parametrize("profile", ["azure", "openai"])
def test_discover_interval_off_foundry_is_refused_at_start(tmp_path: Path, profile: str) -> None:
    """`threadsync run` exits 2 naming the key, before it creates or opens the mirror."""
    db = tmp_path / "m.db"
    env = {
        "THREADSYNC_API__PROFILE": profile,
        "THREADSYNC_API__ENDPOINT": "https://example.invalid",
        "THREADSYNC_API__API_KEY": "k",
        "THREADSYNC_DATABASE_URL": f"sqlite:///{db}",
        "THREADSYNC_DAEMON__DISCOVER_INTERVAL": "600",
    }
    result = CliRunner().invoke(app, ["run"], env=env)
    assert result.exit_code == 2, result.output
    assert "daemon.discover_interval" in result.stderr
    assert "cannot list threads" in result.stderr
    assert not db.exists()
