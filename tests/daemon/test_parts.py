"""The daemon's parts in-process: heartbeat and `check`, metrics, health app, job runner,
scheduler settings, the one-daemon lock, signals, and a whole Daemon against the emulator."""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from worker.cli.app import app
from worker.config import DaemonSettings, Settings
from worker.daemon import lifecycle
from worker.daemon.health import create_health_app
from worker.daemon.heartbeat import decode, encode, judge, write_beat
from worker.daemon.jobs import JobRunner
from worker.daemon.lifecycle import Daemon
from worker.daemon.lock import daemon_lock, file_lock
from worker.daemon.metrics import DaemonMetrics
from worker.daemon.scheduler import Cron, Every, JobSpec, Schedule
from worker.emulator import Emulator, ManualClock
from worker.errors import ConfigError
from worker.store.db import Mirror
from worker.store.repo import add_threads
from worker.sync.outcome import ThreadOutcome
from worker.sync.plan import Counts
from worker.testing import emulated_client

NOW = datetime(2025, 5, 1, tzinfo=UTC)


# -- heartbeat and `threadsync check` ------------------------------------------------------------


def test_heartbeat_is_fresh_within_three_intervals_and_stale_after() -> None:
    """The judge accepts a beat up to 3 x interval old and explains everything else."""
    beat = encode(NOW, 42)
    assert decode(beat) is not None
    assert judge(beat, NOW + timedelta(seconds=29), 10.0) is None
    stale = judge(beat, NOW + timedelta(seconds=31), 10.0)
    assert stale is not None
    assert "pid 42" in stale
    assert "31 s old" in stale
    missing = judge(None, NOW, 10.0)
    assert missing is not None
    assert "threadsync run" in missing
    broken = judge("yesterday-ish", NOW, 10.0)
    assert broken is not None
    assert "unreadable" in broken


def test_check_command_reads_the_heartbeat_and_never_creates_a_mirror(tmp_path: Path) -> None:
    """0 with a fresh beat; 1 with a stale one; 1, creating no file, when there is no mirror."""
    runner = CliRunner()
    db = tmp_path / "m.db"
    url = f"sqlite:///{db}"
    missing = runner.invoke(app, ["--database-url", url, "check"])
    assert missing.exit_code == 1
    assert not db.exists()
    mirror = Mirror(url)
    write_beat(mirror, datetime.now(UTC))
    fresh = runner.invoke(app, ["--database-url", url, "check"])
    assert fresh.exit_code == 0, fresh.output
    write_beat(mirror, datetime.now(UTC) - timedelta(minutes=5))
    stale = runner.invoke(app, ["--database-url", url, "check"])
    assert stale.exit_code == 1
    mirror.dispose()


# -- metrics and the health app ------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_client_events_and_thread_outcomes() -> None:
    """Requests by status (none for no answer), retries, 429s, changes and pass results."""
    m = DaemonMetrics()
    events = m.client_events()
    route = "/threads/{thread_id}/messages"
    events.on_response("GET", route, 200, 0.01)
    events.on_response("GET", route, 429, 0.01)
    events.on_response("GET", route, None, 0.01)
    events.on_retry(route, 429, 0.5)
    events.on_throttled(0.5)
    m.record_outcome(ThreadOutcome("thread_a", "synced", counts=Counts(added=3, deleted=1)))
    m.record_outcome(ThreadOutcome("thread_b", "failed"))
    m.set_edits({"pending": 2})
    got = samples(m.render().decode())
    get = (("method", "GET"), ("route", route))
    assert got[("threadsync_requests_total", (*get, ("status", "200")))] == 1
    assert got[("threadsync_requests_total", (*get, ("status", "429")))] == 1
    assert got[("threadsync_requests_total", (*get, ("status", "none")))] == 1
    assert got[("threadsync_retries_total", (("route", route),))] == 1
    assert got[("threadsync_throttled_total", ())] == 1
    assert got[("threadsync_messages_mirrored_total", (("change", "added"),))] == 3
    assert got[("threadsync_messages_mirrored_total", (("change", "deleted"),))] == 1
    assert got[("threadsync_thread_passes_total", (("result", "failed"),))] == 1
    assert got[("threadsync_edits", (("state", "pending"),))] == 2
    assert got[("threadsync_edits", (("state", "conflicted"),))] == 0
    assert got[("threadsync_thread_sync_duration_seconds_count", ())] == 2
    assert got[("threadsync_last_successful_pass_timestamp_seconds", ())] > 0
    # No label anywhere carries a thread id.
    assert all("thread_a" not in str(key) for key in got)


def test_metrics_count_each_label_set_on_its_own_series() -> None:
    """The children kept per label values: the same values add up on one series, other values
    (a status, a result) start their own, and no answer is counted as status none."""
    m = DaemonMetrics()
    events = m.client_events()
    route = "/threads/{thread_id}/messages"
    for status in (200, 200, 404, None, 200):
        events.on_response("GET", route, status, 0.01)
    events.on_response("POST", route, 200, 0.01)
    for result in ("synced", "synced", "failed"):
        m.record_outcome(ThreadOutcome("thread_a", result))
    got = samples(m.render().decode())
    get = (("method", "GET"), ("route", route))
    assert got[("threadsync_requests_total", (*get, ("status", "200")))] == 3
    assert got[("threadsync_requests_total", (*get, ("status", "404")))] == 1
    assert got[("threadsync_requests_total", (*get, ("status", "none")))] == 1
    post = (("method", "POST"), ("route", route), ("status", "200"))
    assert got[("threadsync_requests_total", post)] == 1
    assert got[("threadsync_thread_passes_total", (("result", "synced"),))] == 2
    assert got[("threadsync_thread_passes_total", (("result", "failed"),))] == 1
    # Passes that changed nothing count no message change.
    assert all(
        value == 0
        for (name, _), value in got.items()
        if name == "threadsync_messages_mirrored_total"
    )


class FakeProbes:
    def __init__(self) -> None:
        self.alive: str | None = None
        self.ready: str | None = "the dispatcher has not run yet"

    def liveness(self) -> str | None:
        return self.alive

    def readiness(self) -> str | None:
        return self.ready

    def metrics_text(self) -> bytes:
        return b"# nothing\n"


@pytest.mark.anyio
async def test_health_app_answers_probes_with_reasons() -> None:
    """200 'ok' when fine, 503 with the reason otherwise; /metrics in Prometheus' content type."""
    probes = FakeProbes()
    transport = httpx.ASGITransport(app=create_health_app(probes))
    async with httpx.AsyncClient(transport=transport, base_url="http://health") as http:
        assert (await http.get("/healthz")).text == "ok\n"
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert "dispatcher" in ready.text
        probes.ready = None
        assert (await http.get("/readyz")).status_code == 200
        probes.alive = "last heartbeat 99 s ago"
        assert (await http.get("/healthz")).status_code == 503
        metrics = await http.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain; version=")
        assert (await http.get("/nope")).status_code == 404
        assert (await http.post("/metrics")).status_code == 405


# -- job runner and scheduler --------------------------------------------------------------------


@pytest.mark.anyio
async def test_stop_cancels_running_jobs_but_their_shielded_work_finishes() -> None:
    """A job inside a shielded section completes that section; the job then ends as cancelled."""
    runner = JobRunner(DaemonMetrics())
    entered, release = anyio.Event(), anyio.Event()
    committed: list[bool] = []

    async def body() -> None:
        with anyio.CancelScope(shield=True):
            entered.set()
            await release.wait()
            committed.append(True)
        await anyio.sleep_forever()

    job = runner.wrap("dispatch", body)
    async with anyio.create_task_group() as tg:
        tg.start_soon(job)
        await entered.wait()
        runner.stop()
        assert runner.running == 1
        release.set()
        assert await runner.wait_idle(5)
    assert committed == [True]
    await job()  # after stop, a late fire does nothing
    assert runner.running == 0


@pytest.mark.anyio
async def test_a_failing_job_is_logged_and_counted_not_raised() -> None:
    """An exception in a job body never escapes into the scheduler."""
    metrics = DaemonMetrics()
    runner = JobRunner(metrics)

    async def body() -> None:
        raise RuntimeError("boom")

    await runner.wrap("push", body)()
    labels = {"job": "push", "outcome": "error"}
    assert metrics.registry.get_sample_value("threadsync_job_runs_total", labels) == 1


@pytest.mark.anyio
async def test_scheduler_runs_interval_jobs_at_once_and_then_repeatedly() -> None:
    """Every job has max_instances=1, coalesce and no misfire limit; an interval job fires at
    start and again each interval."""
    fired = 0
    enough = anyio.Event()

    async def tick() -> None:
        nonlocal fired
        fired += 1
        if fired == 3:
            enough.set()

    schedule = Schedule(
        [JobSpec("tick", tick, Every(0.05)), JobSpec("nightly", tick, Cron("17 3 * * *"))]
    )
    assert schedule.settings_of("tick") == {
        "max_instances": 1,
        "coalesce": True,
        "misfire_grace_time": None,
    }
    schedule.start()
    try:
        with anyio.fail_after(10):
            await enough.wait()
    finally:
        schedule.shutdown()


def test_a_bad_cron_expression_is_a_config_error() -> None:
    async def noop() -> None:
        return None

    with pytest.raises(ConfigError, match="crontab"):
        Schedule([JobSpec("reconcile", noop, Cron("every day"))])


# -- the one-daemon lock -------------------------------------------------------------------------


def take(lock: AbstractContextManager[object]) -> None:
    with lock:
        pass


def test_sqlite_lock_refuses_a_second_holder_and_frees_on_release(tmp_path: Path) -> None:
    """The lock file names the holder; a second lock is a ConfigError; released, it is free."""
    path = tmp_path / "m.db.daemon.lock"
    with file_lock(path), pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
        take(file_lock(path))
    with file_lock(path):
        pass


def test_daemon_lock_is_exclusive_on_both_backends(mirror_url: str) -> None:
    """SQLite file lock or PostgreSQL advisory lock: a second daemon on one mirror is refused."""
    first, second = Mirror(mirror_url), Mirror(mirror_url)
    try:
        with daemon_lock(first), pytest.raises(ConfigError, match="another threadsync daemon"):
            take(daemon_lock(second))
        with daemon_lock(second):
            pass
    finally:
        first.dispose()
        second.dispose()


# -- signals -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_first_signal_stops_gracefully_and_a_second_exits_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM sets the stop event; another signal calls os._exit(130) without waiting."""
    exits: list[int] = []
    forced = anyio.Event()

    def fake_exit(code: int) -> None:
        exits.append(code)
        forced.set()

    monkeypatch.setattr(os, "_exit", fake_exit)
    stop = anyio.Event()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lifecycle.watch_signals, stop)
            await anyio.sleep(0.05)  # let the receiver install its handlers
            os.kill(os.getpid(), signal.SIGTERM)
            await stop.wait()
            assert exits == []
            os.kill(os.getpid(), signal.SIGINT)
            await forced.wait()
            tg.cancel_scope.cancel()
    assert exits == [130]


# -- a whole daemon in-process -------------------------------------------------------------------


@pytest.mark.anyio
async def test_daemon_serves_probes_syncs_and_stops_cleanly(mirror: Mirror) -> None:
    """Started on a fresh mirror it syncs within its first dispatch, turns ready, serves metrics
    on a real socket, and exits 0 when told to stop; readiness reports the shutdown."""
    emulator = Emulator(clock=ManualClock(), seed=5)
    ids = emulator.seed(seed=5, threads=3, messages=10)
    with mirror.write() as session:
        add_threads(session, ids)
    settings = Settings(
        database_url=mirror.safe_url,
        daemon=DaemonSettings(
            dispatch_interval=0.05,
            heartbeat_interval=1.0,
            sync_interval=60,
            health_port=0,
        ),
    )
    stop = anyio.Event()
    codes: list[int] = []
    async with emulated_client(emulator) as client:
        daemon = Daemon(settings, mirror, client, metrics=DaemonMetrics())
        assert daemon.readiness() is not None

        async def serve() -> None:
            codes.append(await daemon.serve(stop))

        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            with anyio.fail_after(20):
                await daemon.started.wait()
                assert daemon.health is not None
                base = f"http://127.0.0.1:{daemon.health.port}"
                async with httpx.AsyncClient(base_url=base) as http:

                    async def ready() -> bool:
                        return (await http.get("/readyz")).status_code == 200

                    async def synced() -> bool:
                        passes = daemon.metrics.registry.get_sample_value(
                            "threadsync_thread_passes_total", {"result": "synced"}
                        )
                        return (passes or 0) >= 3

                    await until(ready)
                    await until(synced)
                    body = (await http.get("/metrics")).text
                    assert "threadsync_thread_passes_total" in body
                    assert (await http.get("/healthz")).status_code == 200
            stop.set()
    assert codes == [0]
    assert daemon.readiness() == "shutting down"


async def until(probe: Callable[[], Awaitable[bool]]) -> None:
    """Poll an async condition (the caller bounds the wait with fail_after)."""
    while True:
        if await probe():
            return
        await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_the_first_dispatch_waits_for_no_gauge_read(mirror: Mirror) -> None:
    """Start-up writes the heartbeat alone, then starts the schedule: the first passes go out
    while the gauges' counts are still being read (they follow, and land)."""
    emulator = Emulator(clock=ManualClock(), seed=6)
    ids = emulator.seed(seed=6, threads=3, messages=5)
    with mirror.write() as session:
        add_threads(session, ids)
    settings = Settings(
        database_url=mirror.safe_url,
        daemon=DaemonSettings(dispatch_interval=0.05, heartbeat_interval=60.0, sync_interval=60),
    )
    stop = anyio.Event()
    release = anyio.Event()
    async with emulated_client(emulator) as client:
        daemon = Daemon(settings, mirror, client, metrics=DaemonMetrics())
        read_counts = daemon._read_counts

        async def slow_gauges() -> None:
            await release.wait()
            now = daemon.now()
            threads, _, _ = await mirror.run(read_counts, now, True)
            assert threads is not None  # asked for
            daemon.metrics.set_threads(threads)

        daemon._gauges = slow_gauges  # type: ignore[method-assign]  # held until released
        registry = daemon.metrics.registry

        async def synced() -> bool:
            passes = registry.get_sample_value(
                "threadsync_thread_passes_total", {"result": "synced"}
            )
            return (passes or 0) >= 3

        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.serve, stop)
            with anyio.fail_after(20):
                await until(synced)
                assert daemon.last_beat is not None
                assert registry.get_sample_value("threadsync_threads", {"state": "active"}) is None
                release.set()

                async def counted() -> bool:
                    return registry.get_sample_value("threadsync_threads", {"state": "active"}) == 3

                await until(counted)
            stop.set()
