"""Bulk import: ``threadsync threads add --from-file`` with 100,000 ids, on SQLite and PostgreSQL.

Each run is the real command in a subprocess (interpreter start, reading and checking every id,
the bulk INSERTs, the commit), timed wall to wall with its peak RSS and CPU, into an empty
mirror (its schema made beforehand, timed apart: the first command on a new mirror adds it); then
the same file again into the now-full mirror (every id already tracked), and the ids with one
line in 1,000 malformed plus ``--skip-invalid``. The baseline is the ORM path one object per id
(``repo.add_threads``, what `threads add` did before), timed in process on 10,000 ids and
scaled, so the comparison is not paid in full.

Target (issue 17): 100,000 ids tracked in under 10 s, on each backend.
PostgreSQL: ``THREADSYNC_TEST_POSTGRES_URL`` (default postgresql://postgres@127.0.0.1:5432/
postgres); a schema of its own is made and dropped. Without a server, SQLite only.
Run: ``.venv/bin/python -m bench.bench_import`` (``THREADSYNC_BENCH_SCALE`` scales it).
"""

from __future__ import annotations

import os
import random
import resource
import string
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

from bench._common import (
    ChildRun,
    Summary,
    Target,
    child_env,
    quiet_logs,
    run_measured,
    scale,
    scaled,
    sqlite_url,
    threadsync_cmd,
)
from worker.store.db import Mirror
from worker.store.repo import add_threads

IDS = 100_000
BASELINE_IDS = 10_000
TARGET_SECONDS = 10.0
PG_URL = os.environ.get(
    "THREADSYNC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
_ALNUM = string.ascii_letters + string.digits


def make_ids(n: int, seed: int = 17) -> list[str]:
    rng = random.Random(seed)
    return ["thread_" + "".join(rng.choices(_ALNUM, k=24)) for _ in range(n)]


def postgres_available() -> bool:
    try:
        engine = create_engine(_admin_url(), connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except Exception as exc:
        print(f"  no PostgreSQL at {PG_URL} ({type(exc).__name__}): SQLite only")
        return False
    return True


def _admin_url() -> str:
    return PG_URL.replace("postgresql://", "postgresql+psycopg://", 1)


@contextmanager
def empty_mirror(backend: str, folder: Path) -> Iterator[str]:
    """The URL of a mirror not made yet: a new SQLite file, or a new PostgreSQL schema."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    if backend == "sqlite":
        yield sqlite_url(folder, f"{name}.db")
        return
    engine = create_engine(_admin_url())
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{name}"
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        engine.dispose()


def run_add(database_url: str, path: Path, *extra: str) -> tuple[ChildRun, float]:
    """The command's run and the CPU seconds it used (user and system; the database server's
    own work on PostgreSQL is not in it)."""
    env = child_env(THREADSYNC_DATABASE_URL=database_url)
    before = _children_cpu()
    run = run_measured(threadsync_cmd("threads", "add", "--from-file", str(path), *extra), env=env)
    if run.returncode != 0:
        raise RuntimeError(f"threads add exited {run.returncode}: {run.stderr[-500:]}")
    return run, _children_cpu() - before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tracked_count(database_url: str) -> int:
    mirror = Mirror(database_url)
    try:
        with mirror.read() as session:
            return int(session.execute(text("SELECT count(*) FROM tracked_thread")).scalar_one())
    finally:
        mirror.dispose()


def baseline_seconds(database_url: str, ids: list[str]) -> float:
    """The ORM path (one object and one flush per id), in process, for ``ids``."""
    mirror = Mirror(database_url)
    try:
        started = time.perf_counter()
        with mirror.write() as session:
            add_threads(session, ids)
        return time.perf_counter() - started
    finally:
        mirror.dispose()


def measure(backend: str, folder: Path, ids: list[str]) -> dict[str, float]:
    """Every figure for one backend."""
    plain = folder / "ids.txt"
    plain.write_text("\n".join(ids) + "\n")
    dirty = folder / "dirty.txt"
    dirty.write_text(
        "\n".join(i if n % 1000 else "thred_" + i[7:] for n, i in enumerate(ids)) + "\n"
    )
    with empty_mirror(backend, folder) as url:
        started = time.perf_counter()
        Mirror(url).dispose()  # the schema, as the first command on a new mirror makes it
        created = time.perf_counter() - started
        first, first_cpu = run_add(url, plain)
        if tracked_count(url) != len(ids):
            raise RuntimeError(f"{backend}: not every id was tracked")
        repeat, _ = run_add(url, plain)
    with empty_mirror(backend, folder) as url:
        skip, _ = run_add(url, dirty, "--skip-invalid")
    base_ids = ids[: min(BASELINE_IDS, len(ids))]
    with empty_mirror(backend, folder) as url:
        Mirror(url).dispose()  # the schema first: not part of the baseline's time
        base = baseline_seconds(url, base_ids)
    return {
        f"{backend}_create_schema_s": created,
        f"{backend}_fresh_s": first.seconds,
        f"{backend}_fresh_rss_mib": first.peak_rss_mib,
        f"{backend}_fresh_cpu_s": first_cpu,
        f"{backend}_already_tracked_s": repeat.seconds,
        f"{backend}_skip_invalid_s": skip.seconds,
        f"{backend}_orm_baseline_scaled_s": base * len(ids) / len(base_ids),
    }


def main() -> dict[str, float]:
    quiet_logs()
    factor = scale()
    n = scaled(IDS, factor)
    ids = make_ids(n)
    figures: dict[str, float] = {"scale": factor, "ids": float(n)}
    summary = Summary(
        f"bulk import: `threads add --from-file` with {n:,} ids",
        header=(
            "backend",
            "fresh",
            "its CPU",
            "peak RSS",
            "all tracked",
            "1/1000 bad, skipped",
            "ORM path",
        ),
    )
    backends = ["sqlite"] + (["postgresql"] if postgres_available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            got = measure(backend, Path(tmp), ids)
            figures.update(got)
            summary.rows.append(
                (
                    backend,
                    f"{got[f'{backend}_fresh_s']:.2f} s",
                    f"{got[f'{backend}_fresh_cpu_s']:.2f} s",
                    f"{got[f'{backend}_fresh_rss_mib']:.0f} MiB",
                    f"{got[f'{backend}_already_tracked_s']:.2f} s",
                    f"{got[f'{backend}_skip_invalid_s']:.2f} s",
                    f"{got[f'{backend}_orm_baseline_scaled_s']:.2f} s",
                )
            )
            summary.targets.append(
                Target(
                    f"{backend}: {n:,} ids tracked",
                    got[f"{backend}_fresh_s"],
                    TARGET_SECONDS * n / IDS,
                    "<=",
                    " s",
                )
            )
    summary.notes.append(
        "schema creation, which the first command on a new mirror adds: "
        + ", ".join(f"{b} {figures[f'{b}_create_schema_s']:.2f} s" for b in backends)
    )
    summary.notes.append(
        "each figure but the last is the whole `threadsync threads add --from-file` subprocess,"
        " interpreter start included; the ORM path (one object per id, as before) is timed in"
        f" process on {BASELINE_IDS:,} ids and scaled"
    )
    load = os.getloadavg()[0]
    figures["load_average"] = load
    summary.notes.append(
        f"load average {load:.1f} at the end (on a busy machine wall time is mostly waiting for"
        " a core; the CPU column is the command's own)"
    )
    summary.print()
    return figures


if __name__ == "__main__":
    main()
