"""Export and backup of a 1,000,000-message mirror.

Generates the mirror directly in SQLite (bulk inserts of realistic raw API objects, 500 B-1 KB
each, 100 threads), then measures in the same run:
  * a bare loop selecting the stored objects in export order and writing them to a file;
  * ``threadsync export`` (JSONL) in a subprocess: wall time and peak RSS (``ru_maxrss``);
  * ``threadsync backup --no-sync`` then ``threadsync backup verify``, each in a subprocess.
Targets (issue 7): export >= 0.5x the bare loop's speed; export peak RSS < 100 MB;
backup + verify < 3x the export time.
Run: ``.venv/bin/python -m bench.bench_export`` (``BENCH_EXPORT_MESSAGES`` scales it down).
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import string
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench._common import child_env, run_measured
from worker.store.db import Mirror

MESSAGES = int(os.environ.get("BENCH_EXPORT_MESSAGES", "1000000"))
THREADS = 100
_ALNUM = string.ascii_letters + string.digits
_WORDS = [
    "thread",
    "message",
    "mirror",
    "export",
    "backup",
    "cursor",
    "page",
    "order",
    "metadata",
    "sync",
    "retry",
]


def _id(prefix: str, rng: random.Random) -> str:
    return prefix + "".join(rng.choices(_ALNUM, k=24))


def _message(rng: random.Random, thread_id: str, created: int, i: int) -> dict[str, object]:
    words = rng.randint(60, 140)  # 500 B - 1 KB of JSON in all
    text = " ".join(rng.choice(_WORDS) for _ in range(words))
    assistant = i % 2 == 1
    annotations = []
    if assistant and rng.random() < 0.3:
        annotations.append(
            {
                "type": "file_citation",
                "text": "【4:0†source】",
                "file_citation": {"file_id": _id("assistant-", rng)},
                "start_index": 10,
                "end_index": 22,
            }
        )
    return {
        "id": _id("msg_", rng),
        "object": "thread.message",
        "created_at": created,
        "assistant_id": _id("asst_", rng) if assistant else None,
        "thread_id": thread_id,
        "run_id": _id("run_", rng) if assistant else None,
        "role": "assistant" if assistant else "user",
        "content": [{"type": "text", "text": {"value": text[:560], "annotations": annotations}}],
        "attachments": [],
        "metadata": {"k": "v"} if rng.random() < 0.2 else {},
        "status": "completed",
        "incomplete_details": None,
        "completed_at": created if assistant else None,
        "incomplete_at": None,
    }


def generate(path: Path) -> None:
    """Create the mirror schema with threadsync, then bulk-insert rows with plain sqlite3."""
    Mirror(f"sqlite:///{path}").dispose()
    rng = random.Random(7)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    per_thread = MESSAGES // THREADS
    stamp = "2026-01-01 00:00:00.000000"
    for t in range(THREADS):
        thread_id = _id("thread_", rng)
        conn.execute(
            "INSERT INTO tracked_thread (thread_id, added_at, state) VALUES (?, ?, 'active')",
            (thread_id, f"2026-01-01 00:00:{t % 60:02d}.{t:06d}"),
        )
        rows = []
        for i in range(per_thread):
            created = 1_700_000_000 + i // 2
            obj = _message(rng, thread_id, created, i)
            raw = orjson.dumps(obj).decode()
            rows.append(
                (
                    obj["id"],
                    thread_id,
                    created,
                    i % 2,
                    obj["role"],
                    "completed",
                    obj["run_id"],
                    obj["assistant_id"],
                    raw,
                    "d" * 32,
                    stamp,
                    stamp,
                )
            )
        conn.executemany(
            "INSERT INTO message (id, thread_id, created_at, tie_rank, role, status, run_id,"
            " assistant_id, raw, digest, first_seen_at, updated_at)"  # metadata: derived from raw
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def bare_loop(db: Path, out: Path) -> float:
    started = time.perf_counter()
    conn = sqlite3.connect(db)
    with out.open("wb") as fh:
        for (raw,) in conn.execute(
            "SELECT raw FROM message WHERE deleted_at IS NULL"
            " ORDER BY thread_id, created_at, tie_rank"
        ):
            fh.write(raw.encode())
            fh.write(b"\n")
    conn.close()
    return time.perf_counter() - started


def run_cli(db: Path, *args: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one threadsync command in a child process.

    The peak is the child's own ``VmHWM`` (see :func:`bench._common.run_measured`): ``wait4``'s
    ``ru_maxrss`` would start from this process's size at fork, which holds the generator's data.
    """
    env = child_env(THREADSYNC_DATABASE_URL=f"sqlite:///{db}", THREADSYNC_LOG__LEVEL="warning")
    run = run_measured([sys.executable, "-m", "worker", *args], env=env)
    if run.returncode != 0:
        raise RuntimeError(
            f"threadsync {' '.join(args)} exited {run.returncode}: {run.stderr[-500:]}"
        )
    return run.seconds, run.peak_rss_mib


def main() -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        db = work / "mirror.db"
        started = time.perf_counter()
        generate(db)
        gen = time.perf_counter() - started
        # Each phase starts on a quiet disk: without this, the first one measured pays for
        # writing back the 1.5 GB just generated (and the one after it for the bare file).
        os.sync()
        bare = bare_loop(db, work / "bare.jsonl")
        os.sync()
        export_s, export_rss = run_cli(db, "export", "-o", str(work / "export.jsonl"))
        os.sync()
        backup_s, backup_rss = run_cli(db, "backup", "--no-sync", "--dest", str(work / "backups"))
        os.sync()
        verify_s, verify_rss = run_cli(db, "backup", "verify", str(work / "backups"))
        results = {
            "messages": float(MESSAGES),
            "mirror_mb": db.stat().st_size / 1e6,
            "generate_s": gen,
            "bare_loop_s": bare,
            "export_s": export_s,
            "export_speed_vs_bare": bare / export_s,
            "export_peak_rss_mib": export_rss,
            "backup_s": backup_s,
            "backup_peak_rss_mib": backup_rss,
            "verify_s": verify_s,
            "verify_peak_rss_mib": verify_rss,
            "backup_plus_verify_vs_export": (backup_s + verify_s) / export_s,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for key, value in results.items():
        print(f"{key:32s} {value:12.3f}")
    print(
        "targets: export_speed_vs_bare >= 0.5, export_peak_rss_mib < 100,"
        " backup_plus_verify_vs_export < 3"
    )
    return results


if __name__ == "__main__":
    main()
