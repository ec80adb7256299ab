"""One daemon per mirror.

SQLite: an exclusive ``fcntl.flock`` on ``<db file>.daemon.lock`` (the kernel drops it when the
process dies, however it dies, so there is no stale lock to clean up). PostgreSQL: a session-level
``pg_try_advisory_lock`` on a connection kept open for the daemon's life; the key is derived from
the mirror's schema so two mirrors in one database do not exclude each other.

A second daemon is refused with a :class:`ConfigError` (exit code 2: nothing was done, and
restarting it as it is will not help): two daemons would pass over the same threads twice.

A session lock vanishes with its session, silently: a PostgreSQL restart, a failover, a pooler
recycling the connection. The daemon re-checks it every heartbeat (:meth:`LockWatch.check`): when
it is gone, the lock is taken again on a new connection, or, if another daemon got it meanwhile,
this one stops. Behind PgBouncer in transaction mode a session lock means nothing: use
``daemon.mode = replicas`` there (``worker/daemon/replicas.py``).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, OperationalError

from worker.errors import ConfigError, StoreError
from worker.logs import get_logger
from worker.store.db import Mirror, sqlite_path

log = get_logger()

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


# Whether this session holds an advisory lock with a bigint key (objsubid 1): the lock
# connection holds that one lock and nothing else.
_HELD_SQL = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1"
    " AND granted AND pid = pg_backend_pid()"
)


class LockWatch:
    """The held one-daemon lock, re-checked (and re-taken after a lost session) on demand."""

    def __init__(self, mirror: Mirror | None = None, conn: Connection | None = None) -> None:
        self.mirror = mirror
        self.conn = conn  # None: a lock the kernel keeps for the process (SQLite) or none needed

    def check(self) -> str | None:
        """Blocking. None while the lock is held (taking it again if its session was lost);
        otherwise why this daemon must stop."""
        if self.conn is None or self.mirror is None:
            return None
        try:
            if self.conn.execute(text(_HELD_SQL)).scalar_one():
                return None
        except DBAPIError:
            pass  # the session is gone (server restarted, connection cut): so is its lock
        log.warning("daemon.lock_lost", mirror=self.mirror.safe_url)
        self.conn.invalidate()
        self.conn.close()
        try:
            self.conn = _take(self.mirror)
        except (ConfigError, StoreError) as exc:
            self.conn = None
            return f"the one-daemon lock was lost and cannot be taken again: {exc}"
        log.info("daemon.lock_reacquired", mirror=self.mirror.safe_url)
        return None

    def release(self) -> None:
        if self.conn is None:
            return
        try:
            self.conn.execute(text(f"SELECT pg_advisory_unlock({ADVISORY_KEY_SQL})"))
        except DBAPIError:
            pass  # a lost session has no lock to give back
        finally:
            self.conn.close()


def _take(mirror: Mirror) -> Connection:
    try:
        conn = mirror.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    except OperationalError as exc:
        raise StoreError(f"cannot open the mirror at {mirror.safe_url}: {exc.orig}") from exc
    try:
        got = conn.execute(text(f"SELECT pg_try_advisory_lock({ADVISORY_KEY_SQL})")).scalar_one()
    except DBAPIError:
        conn.close()
        raise
    if not got:
        conn.close()
        raise ConfigError(
            f"another threadsync daemon already runs on this mirror ({mirror.safe_url},"
            " advisory lock held); stop it first, or point this one at another schema"
        )
    return conn


@contextmanager
def advisory_lock(mirror: Mirror) -> Iterator[LockWatch]:
    """Hold a PostgreSQL advisory lock for this mirror's schema on a dedicated connection."""
    watch = LockWatch(mirror, _take(mirror))
    try:
        yield watch
    finally:
        watch.release()


@contextmanager
def daemon_lock(mirror: Mirror) -> Iterator[LockWatch]:
    """The one-daemon lock for whichever backend the mirror is."""
    if not mirror.is_sqlite:
        with advisory_lock(mirror) as watch:
            yield watch
        return
    db_file = sqlite_path(mirror.url)
    if db_file is None:  # an in-memory mirror belongs to this process alone
        yield LockWatch()
        return
    with file_lock(lock_path(db_file)):
        yield LockWatch()
