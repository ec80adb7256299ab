"""Several threadsync processes on one mirror at once: syncs, a daemon, a push and a backup.

On PostgreSQL nothing serialised them: two syncs planned the same page from the same read and both
inserted it (UniqueViolation, exit 1, messages missing until the next run). Each page write now
takes its thread's transaction-scoped lock. SQLite serialises writers by itself; both run here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from worker.emulator import Emulator, FaultRule, serve_in_thread
from worker.jsontext import loads

from ..harness import KEY, DaemonProcess, run, user_env
from ..hostile import hostile_thread, normalised


def test_syncs_daemon_push_and_backup_at_once_lose_and_duplicate_nothing(
    mirror_url: str, tmp_path: Path
) -> None:
    """Three syncs, a push and a backup (which syncs too) start together on one mirror beside a
    running daemon, over hostile data: every process exits 0 without a traceback, the daemon
    fails no thread, the mirror holds every message once, the push's edits reached the server
    whole, the backup verifies, and after a reconcile the export equals the server's truth."""
    emulator = Emulator(api_key=KEY, seed=21)
    with serve_in_thread(emulator) as url:
        ids = [*emulator.seed(seed=21, threads=4, messages=250), hostile_thread(emulator)]
        emulator.add_fault(FaultRule(fault="latency", times=None, latency_ms=2, jitter_ms=2))
        env = user_env(url, tmp_path / "unused.db")
        env["THREADSYNC_DATABASE_URL"] = mirror_url
        env["THREADSYNC_SYNC__PAGE_LIMIT"] = "20"
        run(["threads", "add", *ids], env, tmp_path)
        run(["sync", "--thread", ids[-1]], env, tmp_path)  # the push needs mirrored messages
        before = [m["metadata"] for m in emulator.truth()["threads"][ids[-1]][:3]]
        edited = [m["id"] for m in emulator.truth()["threads"][ids[-1]][:3]]
        for message_id in edited:
            run(["metadata", "set", ids[-1], message_id, "reviewed=yes"], env, tmp_path)
        commands = [
            ["sync"],
            ["sync"],
            ["sync", "--concurrency", "2"],
            ["push"],
            ["backup", "--dest", str(tmp_path / "backups")],
        ]
        (tmp_path / "backups").mkdir()
        env.update(
            THREADSYNC_LOG__FORMAT="json",
            THREADSYNC_DAEMON__DISPATCH_INTERVAL="0.2",
            THREADSYNC_DAEMON__SYNC_INTERVAL="0.5",
            THREADSYNC_DAEMON__REQUESTS_PER_SECOND="400",
        )
        daemon = DaemonProcess(env, tmp_path / "daemon.log")
        daemon.wait_event("daemon.started")
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "worker", *args],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for args in commands
        ]
        for args, proc in zip(commands, procs, strict=True):
            stdout, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 0, f"{args} exited {proc.returncode}\n{stdout}\n{stderr}"
            assert "Traceback" not in stdout + stderr, (args, stderr)
        assert daemon.terminate(timeout=60) == 0
        daemon.close()
        log = daemon.log_file.read_text()
        assert "Traceback" not in log
        assert not [e for e in daemon.events() if e.get("event") == "sync.thread_failed"]
        truth = emulator.truth()["threads"]
        # The edit went through whole: every other key (U+0000, lone surrogates) as it was.
        after = [m["metadata"] for m in truth[ids[-1]][:3]]
        assert after == [{**meta, "reviewed": "yes"} for meta in before]
        out = tmp_path / "now.jsonl"
        run(["export", "--out", str(out)], env, tmp_path)
        held = [loads(line)["id"] for line in out.read_bytes().splitlines()]
        assert sorted(held) == sorted(m["id"] for t in ids for m in truth[t])  # once each
        (snapshot,) = (tmp_path / "backups").glob("threadsync-*")
        run(["backup", "verify", str(snapshot)], env, tmp_path)
        run(["sync", "--full"], env, tmp_path)  # a listing taken before the push is undone
        run(["export", "--out", str(out)], env, tmp_path)
        lines = [normalised(loads(line)) for line in out.read_bytes().splitlines()]
        assert lines == [normalised(m) for t in ids for m in truth[t]]
        status = run(["status", "--json"], env, tmp_path)
        rows = [orjson.loads(line) for line in status.stdout.splitlines()]
        assert all(r["last_error"] is None for r in rows), rows


pytestmark = pytest.mark.slow
