"""SQLite mirror files handled as files: online copies, read-only opens, integrity checks.

The backup takes and checks ``mirror.db`` through Python's sqlite3 directly, below SQLAlchemy:
SQLite's online backup API has no SQLAlchemy form, and a snapshot's twin read transactions must
begin while a third connection holds the write lock (see :func:`twin_snapshots`). Everything that
touches the driver for that is here; ``worker/backup`` gets connections only to hand them back to
``worker/store`` (the JSONL reads of ``messages.py``), and this module's errors, not the driver's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

Connection = sqlite3.Connection  # an open file, for the ``messages.file_*`` and ``sqlite_*`` reads


class CannotOpen(Exception):
    """The file could not be opened; the text is the driver's."""


class Unreadable(Exception):
    """The file opened but a read failed (not a database, damaged); the text is the driver's."""


def make_self_contained(db: Path) -> None:
    """Leave the file as one self-contained database (no -wal/-shm beside it)."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
    finally:
        conn.close()


def copy_online(source: Path, db: Path) -> None:
    """A consistent copy of the SQLite file ``source`` at ``db``, while others keep writing."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(db)
    try:
        src.backup(dst)  # pages=-1: one step under one read transaction, hence consistent
    finally:
        dst.close()
        src.close()


@dataclass(frozen=True)
class Twins:
    """Two read-only connections whose read transactions began at the same instant."""

    copier: Connection  # usable from another thread (the copy runs in one)
    reader: Connection


@contextmanager
def twin_snapshots(source: Path) -> Iterator[Twins]:
    """Two read transactions on ``source`` of one instant, closed on leaving.

    Both begin while a third connection holds the write lock, so no writer can commit between the
    two snapshots; the lock is released at once (a sync waits a few milliseconds).
    """
    uri = f"file:{source}?mode=ro"
    # mode=rw: a file this user cannot write would otherwise open read-only, and its BEGIN
    # IMMEDIATE would hold no lock at all (the backup checks write access before it comes here).
    gate = sqlite3.connect(f"file:{source}?mode=rw", uri=True, isolation_level=None, timeout=30)
    copier = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    reader = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        gate.execute("BEGIN IMMEDIATE")
        try:
            for conn in (copier, reader):
                conn.execute("BEGIN")
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the snapshot
        finally:
            gate.execute("ROLLBACK")
        yield Twins(copier, reader)
    finally:
        for conn in (reader, copier, gate):
            conn.close()


def copy_snapshot(copier: Connection, db: Path) -> None:
    """Copy the snapshot of ``copier``'s open read transaction to the new file ``db``, then end
    that transaction (so checkpoints can proceed)."""
    dst = sqlite3.connect(db)
    # No journal for a file nobody else sees yet; the caller fsyncs it whole when sealing.
    dst.execute("PRAGMA journal_mode=OFF")
    dst.execute("PRAGMA synchronous=OFF")
    try:
        copier.backup(dst)  # inside copier's open read transaction: its snapshot
    finally:
        dst.close()
    copier.rollback()


def schema_revision(db: Path) -> str | None:
    """The Alembic revision a mirror file carries, None if its version table is empty."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])


@contextmanager
def open_readonly(db: Path, *, immutable: bool = False) -> Iterator[Connection]:
    """``db`` opened read-only (``immutable``: a file nothing writes, so SQLite takes no locks),
    closed on leaving; driver errors come out as :class:`CannotOpen` or :class:`Unreadable`."""
    uri = f"file:{db}?mode=ro&immutable=1" if immutable else f"file:{db}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise CannotOpen(str(exc)) from None
    try:
        yield conn
    except sqlite3.DatabaseError as exc:
        raise Unreadable(str(exc)) from None
    finally:
        conn.close()


def integrity_check(conn: Connection, *, thorough: bool) -> str:
    """SQLite's verdict on the file's first problem, ``"ok"`` if none: ``quick_check``, or with
    ``thorough`` the full ``integrity_check`` (every index entry matched against its row)."""
    check = "integrity_check" if thorough else "quick_check"
    (verdict,) = conn.execute(f"PRAGMA {check}(1)").fetchone()
    return str(verdict)
