"""A backup whose destination cannot take it (full, read-only): one line, exit 2, no partial
snapshot, and nothing deleted (retention runs only after a snapshot is complete). On SQLite and
PostgreSQL mirrors: their snapshots are written by different code."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
from typer.testing import CliRunner

from tests.filesystems import fill, remount_read_only, tmpfs
from worker.backup import list_backups, snapshot, verify
from worker.cli.app import app
from worker.emulator import Emulator, ManualClock
from worker.store import sqlite_files
from worker.store.db import Mirror
from worker.store.repo import add_threads
from worker.sync.runner import sync_threads
from worker.testing import emulated_client

# Keep one snapshot only: a second successful backup would delete the first.
KEEP_ONE = {
    "THREADSYNC_BACKUP__KEEP_LAST": "1",
    "THREADSYNC_BACKUP__KEEP_DAILY": "0",
    "THREADSYNC_BACKUP__KEEP_WEEKLY": "0",
    "THREADSYNC_BACKUP__KEEP_MONTHLY": "0",
}


@pytest.fixture
def synced(mirror: Mirror, mirror_url: str) -> str:
    """A mirror holding two synced threads (the backup command runs its own event loop)."""
    emulator = Emulator(clock=ManualClock(), seed=9)
    ids = emulator.seed(seed=4, threads=2, messages=40)
    with mirror.write() as session:
        add_threads(session, ids)

    async def sync() -> bool:
        async with emulated_client(emulator) as client:
            return (await sync_threads(client, mirror)).ok

    assert anyio.run(sync)
    return mirror_url


def backup(url: str, dest: Path) -> Any:
    args = ["--log-level", "error", "--database-url", url, "backup", "--dest", str(dest)]
    args.append("--no-sync")
    return CliRunner().invoke(app, args, env=KEEP_ONE)


def one_error_line(result: Any) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    [line] = [x for x in result.output.splitlines() if x.strip()]
    return str(line)


def sqlite_full() -> sqlite3.Error:
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = 13
    return full


def first_snapshot(url: str, dest: Path) -> Path:
    result = backup(url, dest)
    assert result.exit_code == 0, result.output
    [taken] = list_backups(dest)
    return taken.path


def assert_untouched(dest: Path, kept: Path) -> None:
    assert [b.path for b in list_backups(dest)] == [kept]
    assert verify(kept).ok
    assert [p for p in os.listdir(dest) if p.endswith(".partial")] == []


def test_a_full_destination_is_one_line_and_deletes_nothing(synced: str, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "dest", size="4m") as dest:
        kept = first_snapshot(synced, dest)
        fill(dest)
        line = one_error_line(backup(synced, dest))
        assert f"cannot write {dest}: No space left on device" in line
        assert "none was deleted" in line
        assert_untouched(dest, kept)


def test_a_read_only_destination_is_one_line_and_deletes_nothing(
    synced: str, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "dest", size="4m") as dest:
        kept = first_snapshot(synced, dest)
        remount_read_only(dest)
        line = one_error_line(backup(synced, dest))
        assert f"cannot write {dest}: Read-only file system" in line
        assert_untouched(dest, kept)
        line = one_error_line(backup(synced, dest / "new"))
        assert "Read-only file system" in line


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
        OSError(errno.EIO, os.strerror(errno.EIO)),
        "sqlite-full",
    ],
    ids=["enospc", "eio", "sqlite-full"],
)
def test_a_failing_write_at_the_boundary_leaves_no_partial_snapshot(
    synced: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Any
) -> None:
    """The same without mounting: the manifest's fsync (the last write) fails, or SQLite says the
    disk is full while sealing the copy."""
    dest = tmp_path / "dest"
    kept = first_snapshot(synced, dest)
    raised: BaseException = failure if isinstance(failure, OSError) else sqlite_full()

    def failing(*_: Any) -> Any:
        raise raised

    if isinstance(raised, sqlite3.Error):
        monkeypatch.setattr(sqlite_files, "make_self_contained", failing)
    else:
        monkeypatch.setattr(snapshot, "_fsync_dir", failing)
    line = one_error_line(backup(synced, dest))
    eio = isinstance(failure, OSError) and failure.errno == errno.EIO
    reason = "Input/output error" if eio else "No space left on device"
    assert f"cannot write {dest}: {reason}" in line
    assert_untouched(dest, kept)
