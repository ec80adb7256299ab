"""Issue 4's reconcile benchmark: a full pass over an unchanged mirror writes nothing, fast.

Scenario: the emulator in its own process with 20 ms added to every request, 200 threads x 500
messages (100,000). After an initial sync, a reconcile (``sync_threads(..., full=True)``, what
``threadsync sync --full`` runs) with nothing changed on the server must write zero message rows
and take no more than 1.2x the time of simply listing every page (a bare pooled
``httpx.AsyncClient``, ascending, same concurrency, measured three times in the same run, around
the reconciles); the median of three reconciles is judged against the mean of the listings.
An ordinary pass afterwards must stay at one request per idle thread plus one GET per
in-progress message.

Zero writes is checked three ways: the run's own counts, every INSERT/UPDATE/DELETE statement the
mirror's engine executed on the ``message`` table (rows by cursor rowcount), and a fingerprint of
the table (row count, tombstones, newest ``updated_at``) before and after.

Run: ``.venv/bin/python -m bench.bench_reconcile`` (``THREADSYNC_BENCH_SCALE=0.02`` for a smoke).
"""

from __future__ import annotations

import re
import sqlite3
import statistics
import tempfile
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import event

from bench._common import (
    LATENCY_MS,
    EmulatorProcess,
    Summary,
    Target,
    count_requests,
    emulator_process,
    list_every_page,
    quiet_logs,
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
from worker.sync.runner import RunReport

THREADS = 200
MESSAGES = 500
CONCURRENCY = 8
SEED = 1

_WRITE = re.compile(r'^\s*(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+"?(\w+)', re.IGNORECASE)


class RowWrites:
    """Rows written per table by every statement the engine runs (executemany rows included)."""

    def __init__(self, mirror: Mirror) -> None:
        self.rows: Counter[str] = Counter()
        self.statements: Counter[str] = Counter()
        event.listen(mirror.engine, "after_cursor_execute", self._after)

    def _after(
        self, _conn: Any, cursor: Any, statement: str, _params: Any, _ctx: Any, _many: bool
    ) -> None:
        found = _WRITE.match(statement)
        if found is not None:
            table = found.group(1).lower()
            self.statements[table] += 1
            self.rows[table] += max(0, int(cursor.rowcount))


def fingerprint(db_path: Path) -> tuple[Any, ...]:
    """What any write to ``message`` would move: rows, tombstones, the newest ``updated_at``."""
    conn = sqlite3.connect(db_path)
    try:
        return tuple(
            conn.execute(
                "SELECT count(*), count(deleted_at), max(updated_at), max(first_seen_at)"
                " FROM message"
            ).fetchone()
        )
    finally:
        conn.close()


def in_progress(db_path: Path) -> int:
    conn = sqlite3.connect(db_path)
    try:
        row = conn.execute(
            "SELECT count(*) FROM message WHERE status = 'in_progress' AND deleted_at IS NULL"
        ).fetchone()
    finally:
        conn.close()
    return int(row[0])


def one_pass(
    emu: EmulatorProcess, url: str, *, full: bool, writes: bool = False
) -> tuple[RunReport, float, dict[str, int], Counter[str], str]:
    """A threadsync pass in this process: report, seconds, requests, rows written, breakdown."""
    mirror = Mirror(url)
    counter = RowWrites(mirror) if writes else None
    try:
        emu.reset_stats()
        report, breakdown = anyio.run(
            partial(threadsync_pass, emu.base_url, mirror, full=full, concurrency=CONCURRENCY)
        )
    finally:
        mirror.dispose()
    rows = counter.rows if counter is not None else Counter()
    return report, breakdown.wall, count_requests(emu.stats()), rows, breakdown.describe()


def bare_listing(emu: EmulatorProcess, ids: list[str]) -> tuple[float, int]:
    listing = anyio.run(partial(list_every_page, emu.base_url, ids, concurrency=CONCURRENCY))
    return listing.seconds, listing.pages


def main() -> dict[str, float]:
    factor = scale()
    threads, messages = scaled(THREADS, factor), scaled(MESSAGES, factor)
    quiet_logs()
    with tempfile.TemporaryDirectory(prefix="bench-reconcile-") as tmp, emulator_process() as emu:
        db_path = Path(tmp) / "mirror.db"
        url = sqlite_url(Path(tmp), "mirror.db")
        ids = emu.seed(seed=SEED, threads=threads, messages=messages)
        track(url, ids)
        initial, initial_s, _, _, _ = one_pass(emu, url, full=False)
        busy = in_progress(db_path)
        print(
            f"mirrored {initial.counts.added:,} messages of {threads} threads in {initial_s:.2f}s;"
            f" {busy} in progress"
        )

        list_before, pages = bare_listing(emu, ids)
        before = fingerprint(db_path)
        full, full_s, full_requests, rows, full_breakdown = one_pass(
            emu, url, full=True, writes=True
        )
        after = fingerprint(db_path)
        list_after, _ = bare_listing(emu, ids)
        # Judged on the median of three reconciles against the mean of three listings, taken
        # in turn: a run of a few seconds lands in whatever phase this shared machine is in
        # (identical runs have differed by a third minutes apart). The first is the one whose
        # writes are counted; every run's own counts must be zero too.
        more = [one_pass(emu, url, full=True) for _ in range(2)]
        list_third, _ = bare_listing(emu, ids)
        t_list = (list_before + list_after + list_third) / 3
        full_runs = [full_s, *(m[1] for m in more)]
        full_median = statistics.median(full_runs)
        more_writes = sum(m[0].counts.writes for m in more)

        ordinary, ordinary_s, ordinary_requests, _, _ = one_pass(emu, url, full=False)

        cli_env = threadsync_env(emu, url)
        emu.reset_stats()
        cli = run_measured(
            threadsync_cmd("sync", "--full", "--concurrency", str(CONCURRENCY)), env=cli_env
        )
        cli_requests = count_requests(emu.stats())

    summary = Summary(
        f"reconcile: {threads} threads x {messages} messages, {LATENCY_MS:.0f} ms latency,"
        f" concurrency {CONCURRENCY}",
        header=("pass", "wall s", "requests", "message rows written", "peak RSS MiB"),
        rows=[
            ("bare listing, before", f"{list_before:.2f}", f"{pages:,}", "-", "-"),
            (
                "threadsync reconcile",
                f"{full_s:.2f}",
                f"{full_requests['total']:,}",
                f"{rows['message']:,}",
                "-",
            ),
            ("bare listing, after", f"{list_after:.2f}", f"{pages:,}", "-", "-"),
            (
                "threadsync ordinary pass",
                f"{ordinary_s:.2f}",
                f"{ordinary_requests['total']:,} ({ordinary_requests.get('get', 0)} get)",
                "-",
                "-",
            ),
            (
                "`threadsync sync --full`",
                f"{cli.seconds:.2f}",
                f"{cli_requests['total']:,}",
                "-",
                f"{cli.peak_rss_mib:.1f}",
            ),
        ],
        targets=[
            Target("reconcile: changes counted by the run", full.counts.writes, 0, "=="),
            Target("reconcile: message rows written (SQL)", rows["message"], 0, "=="),
            Target("reconcile: message table fingerprint moved", float(before != after), 0, "=="),
            Target("reconcile runs 2-3: changes counted", more_writes, 0, "=="),
            Target("reconcile (median of 3) / bare listing", full_median / t_list, 1.2, "<=", "x"),
            Target("ordinary: list requests", ordinary_requests.get("list", 0), threads, "=="),
            Target(
                "ordinary: all requests (threads + in-progress)",
                ordinary_requests["total"],
                threads + busy,
                "==",
            ),
        ],
        notes=[
            f"bare listing = mean of before, after and after the 3rd reconcile: {t_list:.2f}s for"
            f" {pages:,} pages ({list_before:.2f}, {list_after:.2f}, {list_third:.2f})",
            "reconcile runs: "
            + ", ".join(f"{x:.2f}s" for x in full_runs)
            + f"; median {full_median:.2f}s",
            f"reconcile breakdown: {full_breakdown}",
            f"reconcile wrote other tables (cursor and run bookkeeping): {dict(rows)}",
            f"reconcile ok={full.ok}; ordinary ok={ordinary.ok}; CLI exit {cli.returncode}",
            f"scale {factor}",
        ],
    )
    summary.print()
    return {
        "scale": factor,
        "threads": float(threads),
        "messages_per_thread": float(messages),
        "in_progress": float(busy),
        "initial_s": initial_s,
        "bare_listing_s": t_list,
        "bare_listing_before_s": list_before,
        "bare_listing_after_s": list_after,
        "pages": float(pages),
        "reconcile_s": full_s,
        "reconcile_requests": float(full_requests["total"]),
        "reconcile_counted_writes": float(full.counts.writes),
        "reconcile_message_rows_written": float(rows["message"]),
        "reconcile_median_s": full_median,
        "reconcile_over_listing": full_median / t_list,
        "ordinary_s": ordinary_s,
        "ordinary_requests": float(ordinary_requests["total"]),
        "cli_full_s": cli.seconds,
        "cli_full_rss_mib": cli.peak_rss_mib,
        **{f"target_{i}_pass": float(t.passed) for i, t in enumerate(summary.targets)},
    }


if __name__ == "__main__":
    main()
