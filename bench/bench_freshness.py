"""Freshness under a request budget (issue 21): 1,000,000 tracked threads, 50 requests/s.

Set-up (PostgreSQL only; rows generated directly with bulk SQL, no API):

- ``tracked_thread`` holds ``THREADS`` rows. Most are idle threads checked a day ago or less, due
  after the run (``check_interval`` = ``max_interval``, one day): they make the table and its
  indexes the size of a real million-thread mirror.
- The emulator (a child process) holds the threads the run can reach: ``ACTIVE`` threads a mutator
  appends messages to during the run (interval ``min_interval``, changed within the last ten
  minutes), and a backlog of idle threads up to an hour overdue, more than the budget can serve
  in the run, so the budget stays saturated and the claim order decides who waits.
- A real :class:`Daemon` (dispatcher, heartbeat with the lag gauges, push and history jobs, the one
  pacer) runs in its own child process for ``MINUTES`` minutes, with a task that measures how late
  the event loop wakes (stalls).

Figures: the daemon's CPU (process CPU time / wall), peak RSS (``VmHWM``), worst loop stall, the
request rate the emulator counted against the budget, and the staleness (seconds since the last
successful check) of the threads changed in the last hour, sampled every 10 s from the mirror:
p50/p90/p99/max, against ``min_interval``.

Run: ``.venv/bin/python -m bench.bench_freshness [--minutes N]``; with
``THREADSYNC_BENCH_PROFILE=PATH`` the daemon child runs under cProfile, timed by each thread's
CPU time (``time.thread_time``: what the CPU figure counts, not the loop's idle waits): the event
loop's thread into ``PATH``, the worker threads (the database work) merged into ``PATH.threads``;
``THREADSYNC_BENCH_FRESHNESS_MINUTES`` sets the length, ``THREADSYNC_BENCH_STEADY=1`` starts
from a steady state (each active thread holds ``STEADY_MESSAGES`` messages, synced once before
the measured window: without it an active thread has no high-water mark, so its first change in
the run is walked in full, with a census, a warm-up cost of ~280 passes in 2 minutes),
``THREADSYNC_BENCH_SCALE`` shrinks the thread counts (smoke test: tiny), and
``THREADSYNC_BENCH_POSTGRES_URL`` (or ``THREADSYNC_TEST_POSTGRES_URL``) names the server; a
database of its own is created and dropped.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
from pydantic import SecretStr
from sqlalchemy import create_engine, text

from bench._common import (
    API_KEY,
    child_env,
    count_requests,
    emulator_process,
    scale,
    scaled,
)
from worker.daemon.freshness import percentile
from worker.daemon.lag import recent_lag
from worker.store.db import Mirror
from worker.store.models import utcnow

THREADS = 1_000_000
ACTIVE = 500
BUDGET = 50.0
MIN_INTERVAL = 60.0
MAX_INTERVAL = 86400.0
DISPATCH_INTERVAL = 5.0
MINUTES_ENV = "THREADSYNC_BENCH_FRESHNESS_MINUTES"
DEFAULT_MINUTES = 10.0
SAMPLE_S = 10.0
# Appends per second across the active threads (each active thread changes every ~4 minutes).
MUTATIONS_PER_S = 2.0
TARGET_CPU_PCT = 10.0
TARGET_RSS_MB = 150.0
TARGET_STALL_MS = 100.0
TARGET_BUDGET_PCT = 5.0
STEADY_ENV = "THREADSYNC_BENCH_STEADY"
STEADY_MESSAGES = 3


def minutes(argv: list[str] | None = None) -> float:
    """``--minutes N`` or ``THREADSYNC_BENCH_FRESHNESS_MINUTES`` (default 10)."""
    args = list(sys.argv[1:] if argv is None else argv)
    raw = os.environ.get(MINUTES_ENV, str(DEFAULT_MINUTES))
    if "--minutes" in args:
        i = args.index("--minutes")
        raw = args[i + 1] if i + 1 < len(args) else ""
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"--minutes / {MINUTES_ENV} must be a number, not {raw!r}") from None
    if not 0 < value <= 600:
        raise SystemExit(f"--minutes / {MINUTES_ENV} must be within (0, 600], not {value}")
    return value


def server_url() -> str:
    return os.environ.get(
        "THREADSYNC_BENCH_POSTGRES_URL",
        os.environ.get(
            "THREADSYNC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    ).replace("postgresql://", "postgresql+psycopg://", 1)


class Database:
    """A database of this run's own on the server, dropped at the end."""

    def __init__(self) -> None:
        self.name = f"threadsync_bench_freshness_{uuid.uuid4().hex[:10]}"
        self.admin = create_engine(server_url(), isolation_level="AUTOCOMMIT")
        base = server_url().rsplit("/", 1)[0]
        self.url = f"{base}/{self.name}"

    def __enter__(self) -> Database:
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        return self

    def __exit__(self, *exc: object) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


def populate(url: str, reachable: list[str], active: int, total: int, run_s: float) -> float:
    """The million rows, in three bulk statements; returns the seconds it took."""
    started = time.monotonic()
    Mirror(url).dispose()  # creates the schema at HEAD
    engine = create_engine(url)
    backlog = reachable[active:]
    with engine.begin() as conn:
        # Idle threads due after the run: next check within the next day, last one a day before.
        conn.execute(
            text(
                """
                INSERT INTO tracked_thread (thread_id, added_at, state, next_sync_at,
                    check_interval, last_checked_at)
                SELECT 'thread_idle_' || lpad(g::text, 8, '0'), now() - interval '30 days',
                    'active', due, :max, due - make_interval(secs => :max)
                FROM (SELECT g, now() + make_interval(secs => :after + random() * :max) AS due
                      FROM generate_series(1, :n) AS g) AS s
                """
            ),
            {"n": total - len(reachable), "max": MAX_INTERVAL, "after": run_s + 60.0},
        )
        # The backlog: idle emulator threads up to an hour overdue.
        conn.execute(
            text(
                """
                INSERT INTO tracked_thread (thread_id, added_at, state, next_sync_at,
                    check_interval, last_checked_at)
                SELECT id, now() - interval '30 days', 'active', due, :max,
                    due - make_interval(secs => :max)
                FROM (SELECT id, now() - make_interval(secs => random() * 3600) AS due
                      FROM unnest(CAST(:ids AS text[])) AS id) AS s
                """
            ),
            {"ids": backlog, "max": MAX_INTERVAL},
        )
        # The active threads: changed within ten minutes, next check within their interval.
        conn.execute(
            text(
                """
                INSERT INTO tracked_thread (thread_id, added_at, state, next_sync_at,
                    check_interval, last_checked_at, last_changed_at)
                SELECT id, now() - interval '30 days', 'active', checked + interval '50 s', :min,
                    checked, checked - make_interval(secs => random() * 540)
                FROM (SELECT id, now() - make_interval(secs => random() * 50) AS checked
                      FROM unnest(CAST(:ids AS text[])) AS id) AS s
                """
            ),
            {"ids": reachable[:active], "min": MIN_INTERVAL},
        )
    with engine.begin() as conn:
        # Every thread has synced before (its first sync is history): passes are the steady
        # state's incremental ones.
        conn.execute(
            text(
                """
                INSERT INTO sync_state (thread_id, initial_done, pages, consecutive_failures,
                    added, changed, deleted, restored, last_sync_at, last_success_at)
                SELECT thread_id, true, 1, 0, 0, 0, 0, 0, last_checked_at, last_checked_at
                FROM tracked_thread
                """
            )
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE tracked_thread"))
        conn.execute(text("VACUUM ANALYZE sync_state"))
    engine.dispose()
    return time.monotonic() - started


def explain_claim(url: str, *, fenced: bool = False) -> str:
    """The claim's plan on the full table (EXPLAIN ANALYZE, rolled back): one statement, the
    candidate pool inside it. ``fenced``: the replicas mode's (database-clock lease, epoch)."""
    from sqlmodel import Session  # noqa: PLC0415 - bench-local

    from worker.daemon.due import claim_leases  # noqa: PLC0415

    engine = create_engine(url)
    from sqlalchemy import event  # noqa: PLC0415

    statements: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH", "UPDATE")):
            statements.append((statement, params))

    with Session(engine) as session:
        conn = session.connection()
        event.listen(engine, "before_cursor_execute", grab)
        claim_leases(
            session,
            now=utcnow(),
            owner="x",
            lease=60,
            limit=250,
            default_interval=60.0,
            fenced=fenced,
        )
        event.remove(engine, "before_cursor_execute", grab)
        lines: list[str] = []
        for statement, params in statements:  # the claim (the next 250: the first are leased)
            plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, params)
            lines.extend(row[0] for row in plan.all())
        session.rollback()
    engine.dispose()
    return "\n".join(lines)


# -- the daemon child ----------------------------------------------------------------------------


def child(config_path: str) -> None:
    """`python -m bench.bench_freshness --child CONFIG`: the daemon under test, for ``seconds``."""
    config = json.loads(Path(config_path).read_text())
    from worker import logs  # noqa: PLC0415 - the child's own imports are part of its RSS

    logs.configure(level="warning")
    profile = os.environ.get("THREADSYNC_BENCH_PROFILE")  # a path: cProfile the daemon into it
    if profile:
        import cProfile  # noqa: PLC0415

        workers = _profile_worker_threads()
        with cProfile.Profile(time.thread_time) as prof:
            figures = anyio.run(_serve, config, backend="asyncio")
        prof.dump_stats(profile)  # the event loop's thread
        _dump_merged(workers, profile + ".threads")  # the worker threads' (the database's work)
    else:
        figures = anyio.run(_serve, config, backend="asyncio")
    Path(config["out"]).write_text(json.dumps(figures))


def _profile_worker_threads() -> list[Any]:
    """A cProfile of its own in every thread started from now on (anyio's worker threads, where
    the database work runs): the loop's profile alone does not see them."""
    import cProfile  # noqa: PLC0415

    profiles: list[Any] = []

    def start(*_: Any) -> None:
        prof = cProfile.Profile(time.thread_time)
        profiles.append(prof)
        prof.enable()  # replaces this hook in the new thread

    threading.setprofile(start)
    return profiles


def _dump_merged(profiles: list[Any], path: str) -> None:
    """The worker threads' profiles as one pstats file (they are idle once the daemon stopped)."""
    import marshal  # noqa: PLC0415
    import pstats  # noqa: PLC0415

    threading.setprofile(None)
    merged: pstats.Stats | None = None
    for n, prof in enumerate(profiles):
        prof.snapshot_stats()
        part = f"{path}.{n}"
        with open(part, "wb") as f:
            marshal.dump(prof.stats, f)
        merged = pstats.Stats(part) if merged is None else merged.add(part)
        os.unlink(part)
    if merged is not None:
        merged.dump_stats(path)


async def _serve(config: dict[str, Any]) -> dict[str, float]:
    from worker.client import ApiClient, Pacer  # noqa: PLC0415
    from worker.config import (  # noqa: PLC0415
        ApiSettings,
        DaemonSettings,
        RetrySettings,
        Settings,
        SyncSettings,
    )
    from worker.daemon.lifecycle import Daemon, tune_interpreter  # noqa: PLC0415
    from worker.daemon.metrics import DaemonMetrics  # noqa: PLC0415
    from worker.memory import tune_collector  # noqa: PLC0415

    tune_collector()
    tune_interpreter()
    settings = Settings(
        database_url=config["db"],
        api=ApiSettings(endpoint=config["base"], api_key=SecretStr(API_KEY)),
        daemon=DaemonSettings(
            dispatch_interval=DISPATCH_INTERVAL,
            min_interval=MIN_INTERVAL,
            max_interval=MAX_INTERVAL,
            max_requests_per_second=BUDGET,
        ),
        sync=SyncSettings(concurrency=16),
    )
    mirror = Mirror(settings.database_url)
    metrics = DaemonMetrics()
    monitor_cpu_pct = await _calibrate_monitor()
    collections = Collections()
    stop = anyio.Event()
    async with ApiClient(
        settings.api,
        RetrySettings(),
        pacer=Pacer(settings.daemon.request_budget),
        events=metrics.client_events(),
    ) as client:
        daemon = Daemon(settings, mirror, client, metrics=metrics)
        async with anyio.create_task_group() as tg:

            async def timer() -> None:
                await anyio.sleep(float(config["seconds"]))
                stop.set()

            tg.start_soon(timer)
            monitor = StallMonitor()
            gc.callbacks.append(collections.observe)
            usage0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            loop0 = time.thread_time()  # the event loop's own thread (the rest: worker threads)
            await daemon.serve(stop)
            usage1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            loop_cpu = time.thread_time() - loop0
            gc.callbacks.remove(collections.observe)
            monitor.stop()
            tg.cancel_scope.cancel()
    mirror.dispose()
    cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    stalls = sorted(monitor.stalls)
    worst = sorted(monitor.worst, reverse=True)[:5]
    print(
        "worst stalls (ms, seconds into the run):",
        [(round(s * 1000), round(t - wall0, 1)) for s, t in worst],
    )
    return {
        "daemon_wall_s": wall1 - wall0,
        "daemon_cpu_s": cpu,
        "daemon_cpu_pct": cpu / (wall1 - wall0) * 100,
        "loop_thread_cpu_pct": loop_cpu / (wall1 - wall0) * 100,
        "daemon_peak_rss_mb": _vm_hwm_mb(),
        "worst_stall_ms": (stalls[-1] if stalls else 0.0) * 1000,
        "p99_stall_ms": percentile(stalls, 0.99) * 1000,
        "stalls_over_100ms": float(sum(s > 0.1 for s in stalls)),
        "monitor_cpu_pct": monitor_cpu_pct,
        **collections.figures(),
        "claim_size_last": float(daemon.dispatcher.claim_limit()),
        "requests_per_pass_estimate": daemon.dispatcher.requests_per_pass,
    }


class StallMonitor:
    """How late the event loop runs a timer due every :data:`TICK_S` (a stall: the loop, or the
    GIL, held by something else). A bare timer callback, not a task sleeping in a loop: the
    monitor's own cost is counted in the daemon's CPU (see :func:`_calibrate_monitor`), and a
    task's wake-up (anyio's checkpoint, cancel scope, future) cost twice as much CPU."""

    TICK_S = 0.01

    def __init__(self) -> None:
        self.stalls: list[float] = []
        self.worst: list[tuple[float, float]] = []  # (stall, when) of those over 50 ms
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_at(self._loop.time() + self.TICK_S, self._tick)
        self._due = self._loop.time() + self.TICK_S

    def _tick(self) -> None:
        now = self._loop.time()
        late = max(0.0, now - self._due)
        self.stalls.append(late)
        if late > 0.05:
            self.worst.append((late, time.monotonic()))
        self._due = now + self.TICK_S
        self._handle = self._loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        self._handle.cancel()


async def _calibrate_monitor(seconds: float = 3.0) -> float:
    """The monitor's own CPU (% of a core) on an otherwise idle loop, before the daemon starts:
    part of ``daemon_cpu_pct``, not the daemon's doing."""
    monitor = StallMonitor()
    cpu0, wall0 = time.process_time(), time.monotonic()
    await anyio.sleep(seconds)
    monitor.stop()
    return (time.process_time() - cpu0) / (time.monotonic() - wall0) * 100


class Collections:
    """The cycle collector's passes during the run, per generation: how many, the longest
    pause, and the time spent (a collection holds the GIL: the loop waits it out)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.longest = [0.0, 0.0, 0.0]
        self.total = [0.0, 0.0, 0.0]
        self._started = 0.0

    def observe(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        gen, spent = info["generation"], time.perf_counter() - self._started
        self.count[gen] += 1
        self.total[gen] += spent
        self.longest[gen] = max(self.longest[gen], spent)

    def figures(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for gen in range(3):
            out[f"gc{gen}_collections"] = float(self.count[gen])
            out[f"gc{gen}_longest_ms"] = self.longest[gen] * 1000
            out[f"gc{gen}_total_ms"] = self.total[gen] * 1000
        return out


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    return 0.0


# -- the parent ----------------------------------------------------------------------------------


class Mutator(threading.Thread):
    """Appends one message at a time to random active threads through the control plane."""

    def __init__(self, emulator: Any, active: list[str], rate: float) -> None:
        super().__init__(daemon=True)
        self.emulator, self.active, self.rate = emulator, active, rate
        self.halt = threading.Event()
        self.appended = 0

    def run(self) -> None:
        rng = random.Random(7)
        while not self.halt.wait(1.0 / self.rate):
            self.emulator.append(rng.choice(self.active), 1)
            self.appended += 1


def steady(url: str, emulator: Any, active: list[str]) -> float:
    """Give each active thread a few messages and sync it once (unpaced, before the measured
    window): its passes in the run then start from a high-water mark. Returns the seconds."""
    from worker import logs  # noqa: PLC0415 - bench-local
    from worker.client import ApiClient  # noqa: PLC0415
    from worker.config import ApiSettings, RetrySettings  # noqa: PLC0415
    from worker.sync.runner import sync_threads  # noqa: PLC0415

    logs.configure(level="warning")
    started = time.monotonic()
    for thread_id in active:
        emulator.append(thread_id, STEADY_MESSAGES)

    async def sync() -> None:
        mirror = Mirror(url)
        api = ApiSettings(endpoint=emulator.base_url, api_key=SecretStr(API_KEY))
        async with ApiClient(api, RetrySettings()) as client:
            report = await sync_threads(client, mirror, thread_ids=active, concurrency=16)
        mirror.dispose()
        if not report.ok:
            raise RuntimeError(f"steady set-up: {len(report.failed)} threads failed to sync")

    anyio.run(sync, backend="asyncio")
    return time.monotonic() - started


def sample_lag(url: str, seconds: float, halt: threading.Event) -> list[float]:
    """Every SAMPLE_S, the staleness of each thread changed within the hour (the lag gauges')."""
    mirror = Mirror(url)
    samples: list[float] = []
    deadline = time.monotonic() + seconds
    while not halt.wait(SAMPLE_S) and time.monotonic() < deadline:
        with mirror.read() as session:
            from sqlmodel import col, select  # noqa: PLC0415

            from worker.store.models import TrackedThread  # noqa: PLC0415

            now = utcnow()
            rows = session.exec(
                select(col(TrackedThread.last_checked_at)).where(
                    col(TrackedThread.last_changed_at) >= now - timedelta(hours=1)
                )
            ).all()
        samples.extend((now - r).total_seconds() for r in rows if r is not None)
    mirror.dispose()
    return samples


def main() -> dict[str, float]:
    factor = scale()
    run_s = minutes() * 60.0
    total = scaled(THREADS, factor)
    active = min(scaled(ACTIVE, factor), total)
    # More backlog than the budget serves in the run: the budget stays saturated.
    backlog = min(total - active, int(BUDGET * run_s * 1.3))
    figures: dict[str, float] = {
        "scale": factor,
        "threads": float(total),
        "active_threads": float(active),
        "backlog_threads": float(backlog),
        "budget_rps": BUDGET,
        "minutes": run_s / 60.0,
        "min_interval_s": MIN_INTERVAL,
        "load_avg_1m_start": os.getloadavg()[0],
    }
    with emulator_process() as emulator, Database() as db:
        reachable = emulator.seed(seed=21, threads=active + backlog, messages=0)
        figures["populate_s"] = populate(db.url, reachable, active, total, run_s)
        plan = explain_claim(db.url)
        print(plan)
        figures["claim_explain_ms"] = _execution_ms(plan)
        fenced_plan = explain_claim(db.url, fenced=True)
        print(fenced_plan)
        figures["claim_fenced_explain_ms"] = _execution_ms(fenced_plan)
        figures["steady_start"] = float(os.environ.get(STEADY_ENV) == "1")
        if figures["steady_start"]:
            figures["steady_sync_s"] = steady(db.url, emulator, reachable[:active])
        with Mirror(db.url).read() as session:
            figures["lag_p99_at_start_s"] = recent_lag(session, utcnow()).p99
        emulator.reset_stats()
        mutator = Mutator(emulator, reachable[:active], MUTATIONS_PER_S)
        halt = threading.Event()
        samples: list[float] = []
        sampler = threading.Thread(
            target=lambda: samples.extend(sample_lag(db.url, run_s + 30, halt)), daemon=True
        )
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.json"
            config = {"db": db.url, "base": emulator.base_url, "seconds": run_s, "out": str(out)}
            (Path(tmp) / "config.json").write_text(json.dumps(config))
            mutator.start()
            sampler.start()
            proc = subprocess.run(
                [sys.executable, "-m", "bench.bench_freshness", "--child", f"{tmp}/config.json"],
                env=child_env(),
                check=False,
            )
            halt.set()
            mutator.halt.set()
            sampler.join()
            mutator.join()
            if proc.returncode != 0:
                raise RuntimeError(f"the daemon child exited with {proc.returncode}")
            figures.update(json.loads(out.read_text()))
        requests = count_requests(emulator.stats())["total"]
        with Mirror(db.url).read() as session:
            final = recent_lag(session, utcnow())
    figures["load_avg_1m_end"] = os.getloadavg()[0]
    figures["appended_messages"] = float(mutator.appended)
    figures["requests"] = float(requests)
    achieved = requests / figures["daemon_wall_s"]
    figures["achieved_rps"] = achieved
    figures["budget_error_pct"] = (achieved - BUDGET) / BUDGET * 100
    samples.sort()
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        figures[f"staleness_{name}_s"] = percentile(samples, q)
    figures["staleness_max_s"] = samples[-1] if samples else 0.0
    figures["staleness_samples"] = float(len(samples))
    figures["recently_changed_at_end"] = float(final.threads)
    figures["target_cpu_ok"] = float(figures["daemon_cpu_pct"] < TARGET_CPU_PCT)
    figures["target_rss_ok"] = float(figures["daemon_peak_rss_mb"] < TARGET_RSS_MB)
    figures["target_stall_ok"] = float(figures["worst_stall_ms"] < TARGET_STALL_MS)
    figures["target_budget_ok"] = float(abs(figures["budget_error_pct"]) <= TARGET_BUDGET_PCT)
    figures["target_staleness_ok"] = float(figures["staleness_p99_s"] <= MIN_INTERVAL)
    print(f"freshness bench: {total:,} threads, budget {BUDGET:g}/s, {run_s / 60:g} min")
    for key, value in figures.items():
        print(f"  {key:28} {value:12.2f}")
    return figures


def _execution_ms(plan: str) -> float:
    """The statements' execution times, summed."""
    times = [
        float(line.split(":")[1].split()[0])
        for line in plan.splitlines()
        if line.strip().startswith("Execution Time:")
    ]
    return sum(times) if times else -1.0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
