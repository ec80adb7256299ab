"""One backup at a time per destination: an ``fcntl`` lock on ``<dest>/.threadsync-backup.lock``.

cron and systemd timers do overlap (a slow run, a manual run during a scheduled one). The lock is
taken without waiting; the loser fails at once and says who holds it. The kernel drops the lock
when the holder exits, however it exits, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from worker.errors import ThreadsyncError
from worker.files import write_failure

LOCK_NAME = ".threadsync-backup.lock"


class BackupBusyError(ThreadsyncError):
    """Another backup into the same destination is running."""


@contextmanager
def backup_lock(dest: Path) -> Iterator[None]:
    """Hold the destination's backup lock for the block, or raise :class:`BackupBusyError`."""
    path = dest / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise write_failure(dest, exc, after="; no backup was taken") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise BackupBusyError(
                f"another backup into {dest} is running ({holder}); this one did nothing"
            ) from None
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, started {stamp}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
