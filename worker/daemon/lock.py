"""One daemon per mirror.

SQLite: an exclusive ``fcntl.flock`` on ``<db file>.daemon.lock`` (the kernel drops it when the
process dies, however it dies, so there is no stale lock to clean up). PostgreSQL: a session-level
``pg_try_advisory_lock`` on a connection kept open for the daemon's life; the key is derived from
the mirror's schema so two mirrors in one database do not exclude each other.

A second daemon is refused with a :class:`ConfigError` (exit code 2: nothing was done, and
restarting it as it is will not help): two daemons would pass over the same threads twice.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from worker.errors import ConfigError, StoreError
from worker.store.db import Mirror, sqlite_path

ADVISORY_KEY_SQL = "hashtextextended('threadsync.daemon:' || current_schema(), 0)"


def lock_path(db_file: Path) -> Path:
    return db_file.with_name(db_file.name + ".daemon.lock")


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created owner-only) or refuse at once."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise ConfigError(
                f"another threadsync daemon ({holder}) already runs on this mirror"
                f" (lock {path}); stop it first, or point this one at another database"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


@contextmanager
def advisory_lock(mirror: Mirror) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock for this mirror's schema on a dedicated connection."""
    try:
        conn = mirror.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    except OperationalError as exc:
        raise StoreError(f"cannot open the mirror at {mirror.safe_url}: {exc.orig}") from exc
    try:
        got = conn.execute(text(f"SELECT pg_try_advisory_lock({ADVISORY_KEY_SQL})")).scalar_one()
        if not got:
            raise ConfigError(
                f"another threadsync daemon already runs on this mirror ({mirror.safe_url},"
                " advisory lock held); stop it first, or point this one at another schema"
            )
        try:
            yield
        finally:
            conn.execute(text(f"SELECT pg_advisory_unlock({ADVISORY_KEY_SQL})"))
    finally:
        conn.close()


@contextmanager
def daemon_lock(mirror: Mirror) -> Iterator[None]:
    """The one-daemon lock for whichever backend the mirror is."""
    if not mirror.is_sqlite:
        with advisory_lock(mirror):
            yield
        return
    db_file = sqlite_path(mirror.url)
    if db_file is None:  # an in-memory mirror belongs to this process alone
        yield
        return
    with file_lock(lock_path(db_file)):
        yield
