"""The daemon's life: lock, start the parts, run until a signal, stop gracefully.

Start-up, in order: the one-daemon lock (a second daemon is refused before it touches anything),
leases left by a crashed predecessor are cleared, a first heartbeat proves the mirror writable,
then the heartbeat loop, the optional health listener and the scheduler start.

SIGTERM or SIGINT: the scheduler starts nothing more, running jobs are cancelled through their
anyio scopes (an in-flight page transaction is shielded and commits), and the daemon exits 0 once
they have unwound, or 1 if that took longer than ``daemon.shutdown_timeout``. A second signal exits
at once with 130: the process dies, and the database rolls back whatever transaction was open.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

import anyio
from sqlalchemy.exc import SQLAlchemyError

from worker.client import ApiClient, Pacer
from worker.config import Settings
from worker.daemon.dispatcher import Dispatcher
from worker.daemon.due import clear_leases, threads_by_state
from worker.daemon.freshness import Lag
from worker.daemon.heartbeat import STALE_AFTER_BEATS, write_beat
from worker.daemon.jobs import JobBody, JobRunner, Jobs, edit_counts
from worker.daemon.lag import recent_lag
from worker.daemon.lock import LockWatch, daemon_lock
from worker.daemon.metrics import THREAD_COUNTS_COST_RATIO, DaemonMetrics, Refresh
from worker.daemon.replicas import Replica, refuse_replicas_on
from worker.daemon.scheduler import Cron, Every, JobSpec, Schedule
from worker.daemon.slots import CRON_PERIOD, Slots
from worker.discover import check_can_discover
from worker.errors import ConfigError, ThreadsyncError
from worker.logs import describe_exception, get_logger
from worker.store.db import Mirror
from worker.store.models import utcnow

if TYPE_CHECKING:  # uvicorn loads only when the health listener is configured
    from worker.daemon.health import HealthServer

log = get_logger()

EXIT_CLEAN = 0
EXIT_SHUTDOWN_TIMEOUT = 1
EXIT_FORCED = 130
EXIT_LOCK_LOST = 1  # single mode: the one-daemon lock was lost and another daemon holds it now


class Daemon:
    """The running parts, wired together; :meth:`serve` runs them until ``stop`` is set."""

    def __init__(
        self,
        settings: Settings,
        mirror: Mirror,
        client: ApiClient,
        *,
        metrics: DaemonMetrics,
        now: Callable[[], datetime] = utcnow,
        clock: Callable[[], float] = time.monotonic,
        replica: Replica | None = None,
        lock: LockWatch | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        self.settings = settings
        self.mirror = mirror
        self.metrics = metrics
        self.now = now
        self.warned_idle = False
        self.clock = clock
        self.replica = replica  # replicas mode (worker/daemon/replicas.py)
        self.slots = None if replica is None else Slots(mirror, replica)
        self.lock = lock  # single mode: the one-daemon lock, re-checked every heartbeat
        self.pacer = pacer  # the one the client paces every request with (replicas: its share)
        self.fatal: str | None = None  # why the daemon stopped itself (the lock was lost)
        self._stop: anyio.Event | None = None
        self.owner = replica.id if replica is not None else f"{socket.gethostname()}:{os.getpid()}"
        self.dispatcher = Dispatcher(
            client, mirror, settings, owner=self.owner, metrics=metrics, now=now, replica=replica
        )
        self.jobs = Jobs(client, mirror, settings, gate=self.dispatcher.gate)
        self.runner = JobRunner(metrics)
        self.last_beat: float | None = None
        self.thread_counts = Refresh(THREAD_COUNTS_COST_RATIO, clock)
        self.beat_error: str | None = None
        self.health: HealthServer | None = None
        self.started = anyio.Event()

    # -- probes ------------------------------------------------------------------------------

    def liveness(self) -> str | None:
        interval = self.settings.daemon.heartbeat_interval
        if self.last_beat is None:
            return "no heartbeat written yet"
        age = self.clock() - self.last_beat
        if age > STALE_AFTER_BEATS * interval:
            return f"last heartbeat {age:.0f} s ago: {self.beat_error or 'the loop is stuck'}"
        return None

    def readiness(self) -> str | None:
        if self.beat_error is not None:
            return f"mirror unreachable: {self.beat_error}"
        if self.runner.stopping:
            return "shutting down"
        d = self.dispatcher
        if d.problem is not None:
            return f"configuration error: {d.problem}"
        if d.last_run_started is None:
            return "the dispatcher has not run yet"
        running = d.last_run_finished is None or d.last_run_finished < d.last_run_started
        age = self.clock() - d.last_run_started
        if not running and age > 3 * self.settings.daemon.dispatch_interval + 5:
            return f"the dispatcher last ran {age:.0f} s ago"
        return self.liveness()

    def metrics_text(self) -> bytes:
        return self.metrics.render()

    # -- parts -------------------------------------------------------------------------------

    def _periodic(self, name: str, body: JobBody, when: Every | Cron) -> JobSpec:
        """A periodic job; in replicas mode it runs once per slot across replicas (slots.py)."""
        if self.slots is None:
            return JobSpec(name, self.runner.wrap(name, body), when)
        period = when.seconds if isinstance(when, Every) else CRON_PERIOD
        run = self.runner.wrap(name, self.slots.wrap(name, period, body))
        self.slots.remember(name, run)
        return JobSpec(name, run, when)

    def job_specs(self) -> list[JobSpec]:
        d = self.settings.daemon
        wrap = self.runner.wrap
        periodic = self._periodic
        specs = [
            JobSpec(
                "dispatch",
                wrap("dispatch", self._dispatch),
                Every(d.dispatch_interval),
            ),
            periodic("reconcile", self.dispatcher.reconcile, Cron(d.reconcile_cron)),
            # The first push waits one dispatch interval: a fresh start syncs before it writes back.
            periodic("push", self.jobs.push, Every(d.push_interval, d.dispatch_interval)),
        ]
        if d.backup_cron:
            specs.append(periodic("backup", self.jobs.backup, Cron(d.backup_cron)))
        if d.discover_interval is not None:
            check_can_discover(self.settings, "daemon.discover_interval")
            # At once, then every interval: the threads found are due at the next dispatch.
            specs.append(periodic("discover", self.jobs.discover, Every(d.discover_interval)))
        if d.migrate_interval:
            # After the first dispatch, like the push: a fresh start syncs before it migrates.
            every = Every(d.migrate_interval, d.dispatch_interval)
            specs.append(periodic("migrate", self.jobs.migrate, every))
        # Hourly, the first a minute after start: a daemon restarted often still prunes.
        specs.append(periodic("history", self.jobs.prune_history, Every(3600.0, 60.0)))
        return specs

    async def _dispatch(self) -> None:
        await self.dispatcher.dispatch(lambda: not self.runner.stopping)

    async def _last_beat(self) -> None:
        """Say in the mirror that this daemon stopped (a probe reports it at once)."""
        with anyio.CancelScope(shield=True):
            try:
                await self.mirror.run_write(write_beat, self.mirror, self.now(), stopped=True)
            except (ThreadsyncError, SQLAlchemyError) as exc:  # the beat then ages out as before
                log.warning("daemon.last_beat_failed", error=type(exc).__name__)

    async def _shielded(self, fn: Callable[[], None]) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.mirror.run_write(fn)
            except (ThreadsyncError, SQLAlchemyError) as exc:  # leases then expire by the TTL
                log.warning("daemon.replica_write_failed", error=describe_exception(exc))

    async def beat(self, *, gauges: bool = True) -> None:
        """Write the heartbeat and refresh the database-backed gauges (all in worker threads).
        ``gauges=False``: the heartbeat alone (at start, so the first claim waits for no count)."""
        try:
            await self.mirror.run_write(write_beat, self.mirror, self.now())
            self.last_beat = self.clock()
            self.beat_error = None
            self.metrics.heartbeat.set(time.time())
            if gauges:
                await self._gauges()
        except (ThreadsyncError, SQLAlchemyError) as exc:
            self.beat_error = describe_exception(exc)
            log.warning("daemon.heartbeat_failed", error=self.beat_error)

    async def _gauges(self) -> None:
        """The gauges read from the mirror: threads by state, queued edits, lag, budget."""
        try:
            now = self.now()
            threads, edits, lag = await self.mirror.run(
                self._read_counts, now, self.thread_counts.due()
            )
            if threads is not None:
                self.metrics.set_threads(threads)
                self._warn_if_idle(sum(threads.values()))
            self.metrics.set_edits(edits)
            self.metrics.set_lag(lag)
            self.metrics.budget.set(self.dispatcher.budget)
            self.metrics.claim_size.set(self.dispatcher.claim_limit())
        except (ThreadsyncError, SQLAlchemyError) as exc:
            self.beat_error = describe_exception(exc)
            log.warning("daemon.heartbeat_failed", error=self.beat_error)

    def _warn_if_idle(self, tracked: int) -> None:
        """Say once (again after threads come and go) that there is nothing to mirror."""
        if tracked == 0 and not self.warned_idle:
            log.warning(
                "daemon.no_threads",
                hint="no thread is tracked: `threadsync threads add ID...` (the daemon picks"
                " them up at its next dispatch)",
            )
        self.warned_idle = tracked == 0

    def _read_counts(
        self, now: datetime, with_threads: bool
    ) -> tuple[dict[str, int] | None, dict[str, int], Lag]:
        """The gauges' reads; the thread-state counts only when ``with_threads`` (they read
        the whole mirror: see ``metrics.THREAD_COUNTS_COST_RATIO``)."""
        threads = None
        with self.mirror.read() as session:
            if with_threads:
                started = time.monotonic()
                threads = threads_by_state(session, now)
                self.thread_counts.took(time.monotonic() - started)
            lag = recent_lag(session, now)
        return threads, edit_counts(self.mirror), lag

    async def _heartbeat_loop(self) -> None:
        await self._gauges()  # the first beat, at start, wrote the heartbeat alone
        while True:
            await anyio.sleep(self.settings.daemon.heartbeat_interval)
            await self.beat()
            if self.lock is not None:
                await self._check_lock(self.lock)

    async def _check_lock(self, lock: LockWatch) -> None:
        """Single mode: a lost one-daemon lock is taken again, or this daemon stops (exit 1)."""
        try:
            problem = await self.mirror.run_write(lock.check)
        except (ThreadsyncError, SQLAlchemyError) as exc:
            problem = f"the one-daemon lock cannot be checked: {describe_exception(exc)}"
        if problem is not None and self.fatal is None:
            self.fatal = problem
            log.error("daemon.lock_lost_for_good", problem=problem)
            if self._stop is not None:
                self._stop.set()

    async def serve(self, stop: anyio.Event) -> int:
        """Run until ``stop`` is set, then shut down gracefully; returns the exit code."""
        d = self.settings.daemon
        await self.beat(gauges=False)  # proves the mirror writable; the gauges follow the start
        if self.beat_error is not None:
            raise ConfigError(f"the mirror is not writable: {self.beat_error}")
        if d.health_port is not None:
            from worker.daemon.health import HealthServer  # noqa: PLC0415 - see the imports

            try:
                self.health = HealthServer(self, d.health_host, d.health_port)
            except OSError as exc:
                raise ConfigError(
                    f"daemon.health_port: cannot listen on {d.health_host}:{d.health_port}:"
                    f" {exc.strerror}"
                ) from exc
        schedule = Schedule(self.job_specs())
        self._stop = stop
        async with anyio.create_task_group() as tg:
            beats = anyio.CancelScope()
            renewing = anyio.CancelScope()  # replicas: renewals go on until the work has ended

            async def heartbeats() -> None:
                with beats:
                    await self._heartbeat_loop()

            tg.start_soon(heartbeats)
            if self.replica is not None and self.slots is not None:
                slots = self.slots

                async def catch_up() -> None:
                    await slots.catch_up(tg)

                async def renewals(replica: Replica) -> None:
                    with renewing:
                        await replica.renewal_loop(catch_up)

                tg.start_soon(renewals, self.replica)
            if self.health is not None:
                tg.start_soon(self.health.serve)
                await self.health.wait_listening()
                log.info("daemon.health_listening", host=self.health.host, port=self.health.port)
            schedule.start()
            log.info(
                "daemon.started",
                pid=os.getpid(),
                mirror=self.mirror.safe_url,
                dispatch_interval=d.dispatch_interval,
                sync_interval=d.sync_interval,
                requests_per_second=d.request_budget,
                min_interval=self.dispatcher.freshness.min_interval,
                max_interval=self.dispatcher.freshness.max_interval,
                jobs=[s.name for s in self.job_specs()],
            )
            self.started.set()
            await stop.wait()
            log.info("daemon.stopping", running_jobs=self.runner.running)
            schedule.pause()
            if self.replica is not None:  # no more claims; `status` shows it handing over
                await self._shielded(self.replica.drain)
            self.runner.stop()
            clean = await self.runner.wait_idle(d.shutdown_timeout)
            schedule.shutdown()
            beats.cancel()
            renewing.cancel()
            if self.replica is not None:  # whatever is still held goes back at once
                await self._shielded(self.replica.deregister)
            if self.replica is None:  # other replicas keep the shared beat fresh
                await self._last_beat()
            if self.health is not None:
                self.health.stop()
        if not clean:
            log.error("daemon.shutdown_timeout", seconds=d.shutdown_timeout)
            return EXIT_SHUTDOWN_TIMEOUT
        if self.fatal is not None:
            return EXIT_LOCK_LOST
        log.info("daemon.stopped")
        return EXIT_CLEAN


async def watch_signals(stop: anyio.Event) -> None:
    """First SIGTERM/SIGINT: graceful stop. Second: leave at once (open transactions roll back)."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if stop.is_set():
                log.warning("daemon.forced_exit", signal=name)
                os._exit(EXIT_FORCED)
            log.info("daemon.signal", signal=name)
            stop.set()


# Measured with bench/bench_daemon.py (2 cores), two sources of event-loop stalls, both fixed here:
# - CPython's default 5 ms GIL switch interval: the loop waited up to ~80 ms for the GIL behind the
#   worker threads doing ORM work (500 due threads); at 1 ms the worst stall was ~14 ms. The daemon
#   is I/O bound, so the extra switching costs little.
# - full (generation 2) garbage collections walking every object the imports created: ~90 ms with
#   1,000 due threads. gc.freeze() after start-up moves those objects out of the collector's sight.
GIL_SWITCH_INTERVAL = 0.001


def tune_interpreter() -> None:
    """Short GIL hand-offs to the loop thread; start-up objects frozen out of full collections
    (no collection first: the imports leave almost no garbage, see worker/memory.py)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    gc.freeze()


async def run_daemon(
    settings: Settings, *, stop: anyio.Event | None = None, handle_signals: bool = True
) -> int:
    """`threadsync run`: the whole daemon; returns the process exit code."""
    if settings.daemon.discover_interval is not None:
        # Before the mirror is opened: a misconfiguration must not even create it.
        check_can_discover(settings, "daemon.discover_interval")
    replicas = settings.daemon.mode == "replicas"
    if replicas:
        refuse_replicas_on(settings.database_url)
    tune_interpreter()
    mirror = Mirror(settings.database_url)
    try:
        with _exclusion(mirror, replicas) as lock:
            metrics = DaemonMetrics()
            replica = None
            if replicas:
                # Never clear leases here: they may be other live replicas' (a rolling deploy).
                replica = Replica(
                    mirror,
                    ttl=settings.daemon.lease_ttl,
                    metrics=metrics,
                    budget=settings.daemon.request_budget,
                )
                await mirror.run_write(replica.register)
            else:
                # Safe only because the lock makes this the only daemon: leases left are a
                # crashed predecessor's, and waiting 900 s for them would stall those threads.
                cleared = await mirror.run_write(_clear_leases, mirror)
                if cleared:
                    log.info("daemon.leases_cleared", threads=cleared)
            # One pacer for every request the daemon makes: the budget is global (replicas: this
            # one's share of it, set at each counted beat and held until admitted).
            share = 1 if replica is None else replica.peers
            pacer = Pacer(settings.daemon.request_budget / share)
            if replica is not None:
                replica.attach(pacer)
            async with ApiClient(
                settings.api,
                settings.retry,
                pacer=pacer,
                events=metrics.client_events(),
                agent=None if replica is None else f"replica/{replica.id}",
            ) as client:
                daemon = Daemon(
                    settings,
                    mirror,
                    client,
                    metrics=metrics,
                    replica=replica,
                    lock=lock,
                    pacer=pacer,
                )
                stop = stop or anyio.Event()
                async with anyio.create_task_group() as tg:
                    if handle_signals:
                        tg.start_soon(watch_signals, stop)
                    code = await daemon.serve(stop)
                    tg.cancel_scope.cancel()
                return code
    finally:
        mirror.dispose()


@contextmanager
def _exclusion(mirror: Mirror, replicas: bool) -> Iterator[LockWatch | None]:
    """Single mode: the one-daemon lock. Replicas: none (row leases coordinate; a session lock
    would not survive PgBouncer's transaction mode)."""
    if replicas:
        yield None
        return
    with daemon_lock(mirror) as lock:
        yield lock


def _clear_leases(mirror: Mirror) -> int:
    with mirror.write() as session:
        return clear_leases(session)
