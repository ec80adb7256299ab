"""Issue 3's sync benchmark: threadsync against the official SDK and against the floor.

Scenario: the emulator in its own process (uvicorn) with 20 ms added to every request, 200 threads
x 500 messages. threadsync phases: initial sync, re-sync with no changes, re-sync after 1,000 new
messages spread over 50 threads; each in this process at concurrency 8 and 16 (``sync_threads``
with a real ``ApiClient`` over the loopback socket) and as a ``threadsync sync`` subprocess for its
peak RSS. Then one thread of 100,000 messages, as a subprocess, for the flat-memory claim. The
first sync at concurrency 8 runs three times on fresh mirrors; the median is judged.

Baseline (what a careful user would write): ``AsyncAzureOpenAI`` auto-pagination, 16 threads at
a time, ``session.merge`` into a SQLModel table, one commit per thread, database work off the event
loop. Floor: a bare pooled ``httpx.AsyncClient`` pulling the same pages with no parsing (T_wire)
plus a bare ``sqlite3`` ``executemany`` upsert of the same rows, one commit per page (T_db).

Run: ``.venv/bin/python -m bench.bench_sync`` (``THREADSYNC_BENCH_SCALE=0.02`` for a smoke run).
"""

from __future__ import annotations

import asyncio
import math
import re
import sqlite3
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio
import orjson
from openai import AsyncAzureOpenAI
from sqlalchemy import create_engine
from sqlalchemy.orm import registry
from sqlmodel import Field, Session, SQLModel

from bench._common import (
    API_KEY,
    API_VERSION,
    LATENCY_MS,
    EmulatorProcess,
    Summary,
    Target,
    count_requests,
    emulator_process,
    list_every_page,
    quiet_logs,
    rate,
    run_measured,
    scale,
    scaled,
    sqlite_url,
    threadsync_cmd,
    threadsync_env,
    threadsync_pass,
    track,
)
from worker.store.db import Mirror

THREADS = 200
MESSAGES = 500
APPEND_TOTAL = 1_000
APPEND_THREADS = 50
BIG_THREAD = 100_000
BASELINE_CONCURRENCY = 16
SEED = 1
MISCOUNTS: list[str] = []
BREAKDOWNS: list[str] = []

# The baseline's table lives in its own registry so it never joins the mirror's SQLModel metadata.
_baseline_registry = registry()


class _BaselineBase(SQLModel, registry=_baseline_registry):
    pass


class BaselineMessage(_BaselineBase, table=True):
    """The table a careful user would declare for the SDK's messages."""

    __tablename__ = "baseline_message"

    id: str = Field(primary_key=True)
    thread_id: str = Field(index=True)
    created_at: int
    role: str
    status: str | None = None
    data: str


@dataclass
class Phase:
    """One measured pass."""

    name: str
    seconds: float
    requests: dict[str, int]
    added: int = 0
    rss_mib: float = math.nan
    ok: bool = True

    def row(self) -> tuple[str, ...]:
        lists, gets = self.requests.get("list", 0), self.requests.get("get", 0)
        return (
            self.name,
            f"{self.seconds:.2f}",
            f"{rate(self.added, self.seconds):,.0f}" if self.added else "-",
            f"{self.requests.get('total', 0):,} ({lists:,} list, {gets:,} get)",
            f"{self.added:,}",
            "-" if math.isnan(self.rss_mib) else f"{self.rss_mib:.1f}",
            "ok" if self.ok else "FAILED",
        )


HEADER = ("phase", "wall s", "msgs/s", "requests", "added", "peak RSS MiB", "result")


# -- the baseline ---------------------------------------------------------------------------------


async def sdk_baseline(base_url: str, thread_ids: list[str], db_path: Path) -> int:
    """The official SDK, 16 threads at a time, ``session.merge`` each message, commit per thread."""
    engine = create_engine(f"sqlite:///{db_path}")
    _baseline_registry.metadata.create_all(engine)
    # The SDK warns that the Assistants API is deprecated, once per call site: not news here.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=__name__)
    client = AsyncAzureOpenAI(azure_endpoint=base_url, api_key=API_KEY, api_version=API_VERSION)
    gate = asyncio.Semaphore(BASELINE_CONCURRENCY)
    # SQLite takes one writer at a time; concurrent sessions would fail with "database is locked".
    writer = asyncio.Lock()
    seen = 0

    def save(rows: list[BaselineMessage]) -> None:
        with Session(engine) as session:
            for row in rows:
                session.merge(row)
            session.commit()

    async def one(thread_id: str) -> None:
        nonlocal seen
        async with gate:
            rows = [
                BaselineMessage(
                    id=m.id,
                    thread_id=thread_id,
                    created_at=m.created_at,
                    role=m.role,
                    status=m.status,
                    data=m.model_dump_json(),
                )
                async for m in client.beta.threads.messages.list(thread_id, limit=100, order="asc")
            ]
            async with writer:
                await asyncio.to_thread(save, rows)
            seen += len(rows)

    try:
        await asyncio.gather(*(one(t) for t in thread_ids))
    finally:
        await client.close()
        engine.dispose()
    return seen


# -- the floor's database half --------------------------------------------------------------------

# The columns threadsync stores (metadata is derived from raw there, so it is not written here).
_FLOOR_SCHEMA = (
    "CREATE TABLE message (id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, created_at INTEGER NOT"
    " NULL, role TEXT, status TEXT, run_id TEXT, assistant_id TEXT, raw TEXT NOT NULL)",
    "CREATE INDEX ix_message_order ON message (thread_id, created_at)",
)
_FLOOR_UPSERT = (
    "INSERT INTO message VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
    " created_at = excluded.created_at, role = excluded.role, status = excluded.status,"
    " run_id = excluded.run_id, assistant_id = excluded.assistant_id, raw = excluded.raw"
)

Row = tuple[str, str, int, str, str, str | None, str | None, str]


def _rows(thread_id: str, body: bytes) -> list[Row]:
    out: list[Row] = []
    for m in orjson.loads(body)["data"]:
        out.append(
            (
                m["id"],
                thread_id,
                m["created_at"],
                m["role"],
                m["status"],
                m.get("run_id"),
                m.get("assistant_id"),
                orjson.dumps(m).decode(),
            )
        )
    return out


def floor_db(bodies: list[tuple[str, bytes]], db_path: Path) -> tuple[float, int]:
    """T_db: the rows of every page, prepared untimed, upserted with one commit per page."""
    pages = [_rows(thread_id, body) for thread_id, body in bodies]
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        for statement in _FLOOR_SCHEMA:
            conn.execute(statement)
        started = time.perf_counter()
        for rows in pages:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_FLOOR_UPSERT, rows)
            conn.execute("COMMIT")
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    return seconds, sum(len(rows) for rows in pages)


# -- threadsync -----------------------------------------------------------------------------------


def in_process(emu: EmulatorProcess, url: str, name: str, *, concurrency: int) -> Phase:
    """One ``sync_threads`` pass in this process; requests as the emulator counted them."""
    mirror = Mirror(url)
    try:
        emu.reset_stats()
        report, breakdown = anyio.run(
            partial(threadsync_pass, emu.base_url, mirror, concurrency=concurrency)
        )
    finally:
        mirror.dispose()
    requests = count_requests(emu.stats())
    if requests["total"] != report.requests:
        # The emulator's count is the truth; a gap is an accounting bug worth reporting.
        MISCOUNTS.append(
            f"{name}: the run reported {report.requests}, the emulator served {requests['total']}"
        )
    BREAKDOWNS.append(f"{name}: {breakdown.describe()}")
    return Phase(name, breakdown.wall, requests, report.counts.added, ok=report.ok)


_ADDED = re.compile(r"(\d+) added")


def as_subprocess(emu: EmulatorProcess, url: str, name: str, *, concurrency: int = 8) -> Phase:
    """``threadsync sync`` as a user runs it; wall time includes interpreter start-up."""
    emu.reset_stats()
    run = run_measured(
        threadsync_cmd("sync", "--concurrency", str(concurrency)),
        env=threadsync_env(emu, url),
    )
    found = _ADDED.search(run.stdout)
    if run.returncode != 0:
        print(run.stderr[-2000:])
    return Phase(
        name,
        run.seconds,
        count_requests(emu.stats()),
        int(found.group(1)) if found else 0,
        run.peak_rss_mib,
        ok=run.returncode == 0,
    )


def in_progress(db_path: Path) -> int:
    """Live messages the mirror holds as still being written: each costs one GET per pass."""
    conn = sqlite3.connect(db_path)
    try:
        row = conn.execute(
            "SELECT count(*) FROM message WHERE status = 'in_progress' AND deleted_at IS NULL"
        ).fetchone()
    finally:
        conn.close()
    return int(row[0])


# -- the run --------------------------------------------------------------------------------------


def main() -> dict[str, float]:
    factor = scale()
    MISCOUNTS.clear()
    BREAKDOWNS.clear()
    threads, messages = scaled(THREADS, factor), scaled(MESSAGES, factor)
    append_threads = min(threads, scaled(APPEND_THREADS, factor))
    per_thread = max(1, scaled(APPEND_TOTAL, factor) // append_threads)
    big = scaled(BIG_THREAD, factor)
    quiet_logs()
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp, emulator_process() as emu:
        d = Path(tmp)
        started = time.perf_counter()
        ids = emu.seed(seed=SEED, threads=threads, messages=messages)
        seed_seconds = time.perf_counter() - started
        print(
            f"seeded {threads} threads x {messages} messages in {seed_seconds:.1f}s;"
            f" {LATENCY_MS:.0f} ms added to every request"
        )

        wire8 = anyio.run(partial(list_every_page, emu.base_url, ids, concurrency=8, keep=True))
        t_db, floor_rows = floor_db(wire8.bodies, d / "floor.db")
        wire8.bodies.clear()
        wire16 = anyio.run(partial(list_every_page, emu.base_url, ids, concurrency=16))
        print(
            f"floor: T_wire {wire8.seconds:.2f}s (c8), {wire16.seconds:.2f}s (c16) for"
            f" {wire8.pages:,} pages ({wire8.size / 2**20:.0f} MiB); T_db {t_db:.2f}s for"
            f" {floor_rows:,} rows"
        )

        for name in ("SDK baseline: initial", "SDK baseline: re-run"):
            emu.reset_stats()
            started = time.perf_counter()
            seen = anyio.run(sdk_baseline, emu.base_url, ids, d / "baseline.db")
            seconds = time.perf_counter() - started
            phases.append(Phase(name, seconds, count_requests(emu.stats()), seen))
            print(f"{name}: {seconds:.2f}s")
        base_initial, base_rerun = phases[0], phases[1]

        urls = {c: sqlite_url(d, f"ts{c}.db") for c in (8, 16)}
        urls[0] = sqlite_url(d, "cli.db")
        for url in urls.values():
            track(url, ids)
        ts: dict[str, Phase] = {}
        for label in ("initial", "idle"):
            for c in (8, 16):
                ts[f"{label} c{c}"] = in_process(
                    emu, urls[c], f"threadsync {label} c{c}", concurrency=c
                )
            ts[f"{label} cli"] = as_subprocess(emu, urls[0], f"`threadsync sync` {label} c8")
            print(f"threadsync {label}: {ts[f'{label} c8'].seconds:.2f}s (c8)")
        busy = in_progress(d / "ts8.db")
        # The first sync is judged on the median of three runs: one run of a few seconds lands in
        # whatever phase this (shared, 2-core) machine is in (identical runs differ by half; see
        # the README, "Benchmarks"); the baseline's single run lasts a minute and averages over
        # such phases by itself.
        for i in (2, 3):
            url = sqlite_url(d, f"ts8-run{i}.db")
            track(url, ids)
            ts[f"initial c8 run{i}"] = in_process(
                emu, url, f"threadsync initial c8, run {i}", concurrency=8
            )
        initial_runs = [ts[k].seconds for k in ("initial c8", "initial c8 run2", "initial c8 run3")]
        initial_s = statistics.median(initial_runs)
        print(f"threadsync initial c8: median {initial_s:.2f}s of {initial_runs}")

        appended = sum(emu.append(t, per_thread) for t in ids[:append_threads])
        for c in (8, 16):
            ts[f"append c{c}"] = in_process(
                emu, urls[c], f"threadsync +{appended} new c{c}", concurrency=c
            )
        ts["append cli"] = as_subprocess(emu, urls[0], f"`threadsync sync` +{appended} new c8")
        phases += ts.values()

    with tempfile.TemporaryDirectory(prefix="bench-big-") as tmp, emulator_process() as emu:
        url = sqlite_url(Path(tmp), "big.db")
        big_ids = emu.seed(seed=SEED, threads=1, messages=big)
        track(url, big_ids)
        big_phase = as_subprocess(emu, url, f"`threadsync sync` 1 thread x {big:,}")
        phases.append(big_phase)

    idle = ts["idle c8"]
    floor = wire8.seconds + t_db
    cli_rss = max(ts[f"{k} cli"].rss_mib for k in ("initial", "idle", "append"))
    summary = Summary(
        f"threadsync sync: {threads} threads x {messages} messages, {LATENCY_MS:.0f} ms latency",
        header=HEADER,
        rows=[p.row() for p in phases],
        targets=[
            Target(
                "initial (median of 3): x faster than SDK baseline",
                base_initial.seconds / initial_s,
                10,
                ">=",
                "x",
            ),
            Target("initial (median of 3): / (T_wire + T_db)", initial_s / floor, 2, "<=", "x"),
            Target("idle: list requests", idle.requests.get("list", 0), threads, "=="),
            Target(
                "idle: all requests (threads + in-progress)",
                idle.requests["total"],
                threads + busy,
                "==",
            ),
            Target(
                "idle: x faster than SDK re-run", base_rerun.seconds / idle.seconds, 50, ">=", "x"
            ),
            Target("after append: messages added", ts["append c8"].added, appended, "=="),
            Target("peak RSS of `threadsync sync`", cli_rss, 100, "<=", " MiB"),
            Target(
                "1-thread RSS minus 200-thread RSS", big_phase.rss_mib - cli_rss, 20, "<=", " MiB"
            ),
        ],
        notes=[
            f"floor T_wire + T_db = {wire8.seconds:.2f} + {t_db:.2f} = {floor:.2f}s at c8"
            f" (T_wire at c16: {wire16.seconds:.2f}s)",
            f"idle pass = {threads} newest-message probes + {busy} GETs of messages the seed left"
            " in_progress (the emulator never finishes them, so every pass re-fetches them)",
            "in-process wall times exclude start-up; the subprocess rows include interpreter and"
            " import time (about 1 s)",
            "initial c8 runs: "
            + ", ".join(f"{x:.2f}s" for x in initial_runs)
            + f"; median {initial_s:.2f}s; baseline / each run: "
            + ", ".join(f"{base_initial.seconds / x:.2f}x" for x in initial_runs),
            f"scale {factor}",
            *MISCOUNTS,
            *BREAKDOWNS,
        ],
    )
    summary.print()
    figures: dict[str, float] = {
        "scale": factor,
        "threads": float(threads),
        "messages_per_thread": float(messages),
        "t_wire_c8_s": wire8.seconds,
        "t_wire_c16_s": wire16.seconds,
        "t_db_s": t_db,
        "in_progress": float(busy),
        "big_thread_messages": float(big),
        "seed_s": seed_seconds,
        "initial_c8_median_s": initial_s,
    }
    for key, p in {
        "baseline_initial": base_initial,
        "baseline_rerun": base_rerun,
        **{k.replace(" ", "_"): v for k, v in ts.items()},
        "big_thread_cli": big_phase,
    }.items():
        figures[f"{key}_s"] = p.seconds
        figures[f"{key}_requests"] = float(p.requests.get("total", 0))
        figures[f"{key}_added"] = float(p.added)
        if not math.isnan(p.rss_mib):
            figures[f"{key}_rss_mib"] = p.rss_mib
    figures.update({f"target_{i}_pass": float(t.passed) for i, t in enumerate(summary.targets)})
    return figures


if __name__ == "__main__":
    main()
