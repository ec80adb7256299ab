"""Acceptance: `threadsync` as a user runs it, against the emulator on a loopback port."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.harness import KEY, run, served, truth_lines, user_env
from worker.emulator import Emulator, FaultRule
from worker.jsontext import loads

from ..hostile import hostile_thread, normalised

__all__ = ["served"]  # the fixture, imported to be used here

HOSTILE_TEXT = "nul \x00 lone \ud800 astral \U0001f9f5 rtl \u202e"


def test_add_sync_export_status(served: tuple[Emulator, str], tmp_path: Path) -> None:
    """The README's flow: add, sync, export, status; the export equals the emulator's truth."""
    emulator, url = served
    ids = emulator.seed(seed=5, threads=3, messages=120)
    env = user_env(url, tmp_path / "m.db")
    run(["threads", "add", *ids], env, tmp_path)
    sync = run(["sync"], env, tmp_path)
    assert "3/3 threads ok" in sync.stdout
    out = tmp_path / "messages.jsonl"
    run(["export", "--format", "jsonl", "--out", str(out)], env, tmp_path)
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert lines == truth_lines(emulator, ids)
    status = run(["status", "--json"], env, tmp_path)
    rows = [orjson.loads(line) for line in status.stdout.splitlines()]
    assert [(r["thread_id"], r["messages"], r["state"]) for r in rows] == [
        (t, 120, "active") for t in ids
    ]


def test_failed_thread_gives_exit_1_and_a_summary(
    served: tuple[Emulator, str], tmp_path: Path
) -> None:
    """One bad thread: exit status 1, the summary names it and why; the others synced."""
    emulator, url = served
    (good,) = emulator.seed(seed=6, threads=1, messages=10)
    env = user_env(url, tmp_path / "m.db")
    run(["threads", "add", good, "thread_missing0"], env, tmp_path)
    proc = run(["sync"], env, tmp_path, check=False)
    assert proc.returncode == 1
    assert "failed: 1 thread: HTTP 404" in proc.stdout
    assert "thread_missing0: thread not found; check the id" in proc.stdout
    assert "1/2 threads ok" in proc.stdout


def test_faulty_run_never_leaks_the_key(served: tuple[Emulator, str], tmp_path: Path) -> None:
    """Every log line, output and file of a run full of faults is free of the API key."""
    emulator, url = served
    ids = emulator.seed(seed=7, threads=2, messages=150)
    for fault in ("429", "500", "drop", "truncate"):
        emulator.add_fault(FaultRule(fault=fault, times=None, probability=0.15))
    env = user_env(url, tmp_path / "m.db")
    env["THREADSYNC_LOG__LEVEL"] = "debug"
    outputs = [run(["threads", "add", *ids, "thread_missing1"], env, tmp_path, check=False)]
    outputs.append(run(["sync"], env, tmp_path, check=False))
    outputs.append(run(["status"], env, tmp_path, check=False))
    outputs.append(run(["export", "--out", str(tmp_path / "x.jsonl")], env, tmp_path, check=False))
    bad_env = dict(env, AZURE_OPENAI_ENDPOINT=url.replace("127.0.0.1", "example.com"))
    outputs.append(run(["sync"], bad_env, tmp_path, check=False))
    text = "".join(p.stdout + p.stderr for p in outputs)
    assert "api.retry" in text  # the faults really happened and were logged
    assert KEY not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_bad_configuration_is_named(tmp_path: Path) -> None:
    """A wrong value names the key, its source and what is wanted; exit status 2."""
    env = user_env("http://127.0.0.1:9", tmp_path / "m.db")
    env["THREADSYNC_SYNC__CONCURRENCY"] = "many"
    proc = run(["sync"], env, tmp_path, check=False)
    assert proc.returncode == 2
    assert "THREADSYNC_SYNC__CONCURRENCY" in proc.stderr
    env = user_env("http://127.0.0.1:9", tmp_path / "m.db")
    env["THREADSYNC_SYNC__PAGE_LIMIT"] = "500"
    proc = run(["sync"], env, tmp_path, check=False)
    assert proc.returncode == 2
    assert "sync.page_limit (from environment variable THREADSYNC_SYNC__PAGE_LIMIT)" in proc.stderr
    assert "less than or equal to 100" in proc.stderr
    env = user_env("http://10.1.2.3:8080", tmp_path / "m.db")
    proc = run(["sync"], env, tmp_path, check=False)
    assert proc.returncode == 2
    assert "http://" in proc.stderr
    assert "ALLOW_INSECURE_HTTP" in proc.stderr
    config = tmp_path / "c.toml"
    config.write_text('[api]\napi_key = "nope"\n')
    proc = run(["--config", str(config), "status"], env, tmp_path, check=False)
    assert proc.returncode == 2
    assert "must not be stored in a config file" in proc.stderr


@pytest.mark.slow
def test_sync_killed_at_random_moments_loses_and_duplicates_nothing(
    served: tuple[Emulator, str], tmp_path: Path, mirror_url: str
) -> None:
    """SIGKILL the sync many times at random instants, on SQLite and PostgreSQL, over data
    holding U+0000, lone surrogates and astral characters; a final sync makes the mirror exact."""
    emulator, url = served
    ids = [*emulator.seed(seed=8, threads=6, messages=400), hostile_thread(emulator)]
    emulator.add_fault(FaultRule(fault="latency", times=None, latency_ms=3, jitter_ms=3))
    env = user_env(url, tmp_path / "m.db")
    env["THREADSYNC_DATABASE_URL"] = mirror_url
    env["THREADSYNC_SYNC__CONCURRENCY"] = "3"
    env["THREADSYNC_SYNC__PAGE_LIMIT"] = "25"
    run(["threads", "add", *ids], env, tmp_path)
    rng = random.Random(42)
    for round_ in range(10):
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "sync"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.3, 1.5))  # a random instant is the point of this test
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if round_ % 3 == 0:  # the thread keeps growing between crashes
            emulator.append_messages(ids[round_ % len(ids)], n=30)
            emulator.append_messages(ids[-1], messages=[{"role": "user", "content": HOSTILE_TEXT}])
    emulator.clear_faults()
    run(["sync"], env, tmp_path)
    out = tmp_path / "all.jsonl"
    run(["export", "--out", str(out)], env, tmp_path)
    lines = [loads(line) for line in out.read_bytes().splitlines()]
    assert len({m["id"] for m in lines}) == len(lines)
    assert [normalised(m) for m in lines] == [normalised(m) for m in truth_lines(emulator, ids)]
    if mirror_url.startswith("sqlite"):
        with sqlite3.connect(tmp_path / "mirror.db") as conn:
            assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"


def test_sync_over_a_socket_with_faults_equals_the_truth(
    served: tuple[Emulator, str], tmp_path: Path
) -> None:
    """429 storms, 5xx, dropped connections and truncated JSON on a real socket: exact export."""
    emulator, url = served
    ids = emulator.seed(seed=9, threads=4, messages=260)
    for fault in ("429", "500", "503", "drop", "truncate"):
        emulator.add_fault(FaultRule(fault=fault, times=None, probability=0.08, retry_after=0.01))
    env = user_env(url, tmp_path / "m.db")
    env["THREADSYNC_RETRY__MAX_ATTEMPTS"] = "25"
    env["THREADSYNC_SYNC__PAGE_LIMIT"] = "10"
    run(["threads", "add", *ids], env, tmp_path)
    run(["sync"], env, tmp_path)
    out = tmp_path / "m.jsonl"
    run(["export", "--out", str(out)], env, tmp_path)
    assert [orjson.loads(x) for x in out.read_bytes().splitlines()] == truth_lines(emulator, ids)
    routes = emulator.stats()["routes"]
    statuses = {status for by in routes.values() for status in by}
    assert "429" in statuses  # the faults really fired
    assert statuses & {"500", "503"}
