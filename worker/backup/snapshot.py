"""Taking one snapshot: ``threadsync-<UTC timestamp>/`` with ``mirror.db``, ``messages.jsonl`` and
``manifest.json``, built in a hidden temporary directory and renamed into place only when complete.

``mirror.db`` is always a portable SQLite mirror at the current schema revision:
  * from a SQLite mirror, SQLite's online backup API copies a consistent snapshot while syncs keep
    writing (one step, under one read transaction), and ``messages.jsonl`` is written at the same
    time from a second read transaction that began at the same instant: both transactions start
    while a third connection holds the write lock, so no commit can fall between them;
  * from PostgreSQL, every threadsync table is read in one REPEATABLE READ transaction and written
    into a fresh SQLite mirror made by the same migrations; ``messages.jsonl`` is then produced
    from that copy.
Either way all three files describe the same instant. The JSONL has ``--include-deleted``
semantics: a backup keeps everything the mirror knows, deleted messages marked as
``worker/export/jsonl.py`` documents.

A daemon's backup in replicas mode is named by its schedule slot (``slot=``), not by the clock, and
published only if that name is free: the rename of a complete directory onto a name that already
holds one fails, atomically, so two publishes for one slot (a paused holder's late one and its
successor's) leave exactly one complete snapshot under that name. ``before_publish`` (the job's
lease check) runs right before the rename; when it raises, nothing is published.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

from worker import __version__
from worker.backup.manifest import (
    DATABASE,
    MANIFEST,
    MESSAGES,
    Manifest,
    ThreadCount,
    read_totals,
    render,
    sha256_of,
)
from worker.backup.tables import copy_tables
from worker.errors import ConfigError, OutputError, StoreError
from worker.export.jsonl import deleted_line, text_of
from worker.export.source import Row, Selection, iter_rows, sqlite_raw_batches
from worker.files import disk_trouble, open_flushing, write_failure
from worker.logs import get_logger
from worker.store import sqlite_files
from worker.store.db import Mirror, sqlite_path
from worker.store.schema import current_revision

log = get_logger()

PREFIX = "threadsync-"
NAME = re.compile(r"^threadsync-(\d{8}T\d{6}Z)$")
STAMP = "%Y%m%dT%H%M%SZ"
PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class Snapshot:
    """A finished snapshot directory."""

    path: Path
    taken_at: datetime
    threads: int
    messages: int
    deleted: int
    bytes: int


def snapshot_name(when: datetime) -> str:
    return PREFIX + when.astimezone(UTC).strftime(STAMP)


def taken_at_of(name: str) -> datetime | None:
    match = NAME.match(name)
    if match is None:
        return None
    return datetime.strptime(match.group(1), STAMP).replace(tzinfo=UTC)


def _free_name(dest: Path, when: datetime) -> Path:
    # Names are whole seconds; two snapshots in one second take the next free second, so names
    # stay unique, sortable and parseable (retention works on the times they carry).
    when = when.astimezone(UTC).replace(microsecond=0)
    while (dest / snapshot_name(when)).exists():
        when += timedelta(seconds=1)
    return dest / snapshot_name(when)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


def copy_database(mirror: Mirror, db: Path) -> None:
    """A consistent copy of ``mirror`` as a SQLite mirror file at ``db``."""
    if mirror.is_sqlite:
        source = sqlite_path(mirror.url)
        if source is None:
            raise ConfigError("an in-memory mirror cannot be backed up; use a file or PostgreSQL")
        sqlite_files.copy_online(source, db)
        return
    copy = Mirror(f"sqlite:///{db}")  # a fresh mirror made by the same migrations
    try:
        if current_revision(copy.engine) != current_revision(mirror.engine):
            raise StoreError("the mirror and this threadsync disagree on the schema revision")
        with (
            mirror.engine.connect().execution_options(isolation_level="REPEATABLE READ") as live,
            live.begin(),
            copy.engine.connect() as into,
            into.begin(),
        ):
            copied = copy_tables(live, into)
        log.info(
            "backup.tables_copied",
            tables=len(copied),
            rows=sum(copied.values()),
            messages=copied.get("message", 0),
        )
    finally:
        copy.dispose()


class _HashingWriter:
    """Counts and hashes bytes on their way to the file, so the JSONL is never read back."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        self.size += len(data)
        self.out.write(data)


@dataclass(frozen=True)
class Written:
    """What :func:`copy_and_export` produced: the JSONL's counts and checksum, the copy's."""

    threads: dict[str, ThreadCount]
    jsonl_sha256: str
    jsonl_bytes: int
    db_sha256: str


def _seal(db: Path) -> str:
    """Make the copy one self-contained file, sync it, and return its SHA-256.

    The sync (the kernel writing back) and the checksum (reading the page cache) overlap.
    """
    sqlite_files.make_self_contained(db)
    with ThreadPoolExecutor(max_workers=1) as pool:
        synced = pool.submit(_fsync_file, db)
        digest = sha256_of(db)
        synced.result()
    return digest


@dataclass(frozen=True, slots=True)
class _Run:
    """Consecutive lines of one thread (no newlines), counted as they were made."""

    thread_id: str
    lines: list[bytes]
    deleted: int
    newest: str | None  # the run's last live message, if any


def _write_runs(runs: Iterable[_Run], target: Path) -> tuple[dict[str, ThreadCount], str, int]:
    """Write the lines (fsynced), adding each run's counts to its thread's."""
    threads: dict[str, ThreadCount] = {}
    with open_flushing(target) as fh:  # flushed behind: the fsync below waits for the tail
        writer = _HashingWriter(fh)
        for run in runs:
            count = threads.get(run.thread_id)
            if count is None:
                count = threads[run.thread_id] = ThreadCount()
            count.messages += len(run.lines) - run.deleted
            count.deleted += run.deleted
            if run.newest is not None:
                count.newest_message_id = run.newest
            run.lines.append(b"")
            writer.write(b"\n".join(run.lines))
        fh.flush()
        os.fsync(fh.fileno())
    return threads, writer.digest.hexdigest(), writer.size


def write_messages(rows: Iterable[Row], target: Path) -> tuple[dict[str, ThreadCount], str, int]:
    """Write ``rows`` as the snapshot's JSONL (fsynced); count them per thread as they pass."""

    def runs() -> Iterator[_Run]:
        thread_id: str | None = None
        lines: list[bytes] = []
        deleted, newest = 0, None
        for row in rows:
            if row.thread_id != thread_id or len(lines) >= 1000:
                if thread_id is not None:
                    yield _Run(thread_id, lines, deleted, newest)
                thread_id, lines, deleted, newest = row.thread_id, [], 0, None
            lines.append(text_of(row).encode())
            if row.deleted_at is None:
                newest = row.id
            else:
                deleted += 1
        if thread_id is not None:
            yield _Run(thread_id, lines, deleted, newest)

    return _write_runs(runs(), target)


def write_sqlite_messages(
    conn: sqlite_files.Connection, target: Path
) -> tuple[dict[str, ThreadCount], str, int]:
    """:func:`write_messages` from a SQLite connection, the stored bytes written as they are.

    A million rows pass through here, so the per-row work is one list comprehension; the rare
    deleted rows are found and rewritten afterwards.
    """

    def runs() -> Iterator[_Run]:
        for thread_id, chunk in sqlite_raw_batches(conn, Selection(include_deleted=True)):
            lines = [raw for _, raw, _ in chunk]
            gone = [(i, deleted) for i, (_, _, deleted) in enumerate(chunk) if deleted is not None]
            for i, deleted_at in gone:
                lines[i] = deleted_line(lines[i], deleted_at)
            newest = next((mid for mid, _, deleted in reversed(chunk) if deleted is None), None)
            yield _Run(thread_id, lines, len(gone), newest)

    return _write_runs(runs(), target)


def export_messages(db: Path, target: Path) -> tuple[dict[str, ThreadCount], str, int]:
    """Write every message of the copy (deleted ones marked) and count them per thread."""
    copy = Mirror(f"sqlite:///{db}", create=False)
    try:
        return write_messages(iter_rows(copy, Selection(include_deleted=True)), target)
    finally:
        copy.dispose()


def copy_and_export_sqlite(source: Path, db: Path, target: Path) -> Written:
    """Copy a SQLite mirror and write its JSONL at once, both from the same instant.

    Two read-only connections open their read transactions while a third holds the write lock,
    so no writer can commit between the two snapshots; the lock is released at once (a sync waits
    a few milliseconds). The copy (SQLite's backup API: C code that releases the GIL) and the
    export (Python) then run side by side instead of one after the other.
    """
    with sqlite_files.twin_snapshots(source) as twins:

        def copy() -> str:
            sqlite_files.copy_snapshot(twins.copier, db)  # then checkpoints may proceed
            return _seal(db)  # while the export is still writing

        with ThreadPoolExecutor(max_workers=1) as pool:
            copied = pool.submit(copy)
            try:
                threads, jsonl_sha, jsonl_size = write_sqlite_messages(twins.reader, target)
            finally:
                db_sha = copied.result()  # the copy always finishes; its error comes first
        return Written(threads, jsonl_sha, jsonl_size, db_sha)


def copy_and_export(mirror: Mirror, db: Path, target: Path) -> Written:
    """``mirror.db`` (sealed: one file, synced) and ``messages.jsonl`` of one instant."""
    source = sqlite_path(mirror.url) if mirror.is_sqlite else None
    if mirror.is_sqlite and source is None:
        raise ConfigError("an in-memory mirror cannot be backed up; use a file or PostgreSQL")
    if source is not None and os.access(source, os.W_OK):
        return copy_and_export_sqlite(source, db, target)
    if source is not None:
        # Without write access no lock can hold writers back between two snapshots: copy
        # first, then export from the copy (slower, equally consistent).
        log.info("backup.read_only_mirror", path=str(source))
    copy_database(mirror, db)
    threads, jsonl_sha, jsonl_size = export_messages(db, target)
    return Written(threads, jsonl_sha, jsonl_size, _seal(db))


def published(path: Path) -> Snapshot | None:
    """The complete snapshot at ``path`` (a slot's name), if one was published there."""
    taken = taken_at_of(path.name)
    totals = read_totals(path) if taken is not None else None
    if taken is None or totals is None:
        return None
    return Snapshot(path, taken, totals.threads, totals.messages, totals.deleted, totals.bytes)


def take_snapshot(
    mirror: Mirror,
    dest: Path,
    *,
    now: datetime,
    slot: datetime | None = None,
    before_publish: Callable[[], None] | None = None,
) -> Snapshot:
    """Build a complete snapshot of ``mirror`` in ``dest``; nothing named ``threadsync-*`` appears
    unless every file is written, synced and listed in the manifest.

    ``slot``: the snapshot is named by it and published only if no snapshot holds that name yet
    (else the one there is returned, and this one discarded). ``before_publish`` runs right
    before the rename and may refuse it by raising."""
    if slot is not None:
        existing = published(dest / snapshot_name(slot))
        if existing is not None:  # this slot's snapshot was published (by a holder now gone)
            log.info("backup.slot_published_already", path=str(existing.path))
            return existing
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{PREFIX}", suffix=PARTIAL_SUFFIX, dir=dest))
    except OSError as exc:
        raise backup_failure(dest, exc) from None
    try:
        db = tmp / DATABASE
        written = copy_and_export(mirror, db, tmp / MESSAGES)
        threads = written.threads
        revision = _revision_of(db)
        manifest = Manifest(
            tool_version=__version__,
            schema_revision=revision,
            created_at=now.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            source_dialect=mirror.dialect,
            threads=threads,
            files={
                DATABASE: {"bytes": db.stat().st_size, "sha256": written.db_sha256},
                MESSAGES: {"bytes": written.jsonl_bytes, "sha256": written.jsonl_sha256},
            },
        )
        (tmp / MANIFEST).write_bytes(render(manifest))
        _fsync_file(tmp / MANIFEST)
        _fsync_dir(tmp)
        final = _free_name(dest, now) if slot is None else dest / snapshot_name(slot)
        if before_publish is not None:
            before_publish()
        existing = _publish(tmp, final)
        if existing is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            log.info("backup.slot_published_already", path=str(final))
            return existing
        _fsync_dir(dest)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        trouble = disk_trouble(exc) if isinstance(exc, Exception) else None
        if trouble is not None:
            raise backup_failure(dest, trouble) from exc
        raise
    size = sum(f.stat().st_size for f in final.iterdir())
    taken = taken_at_of(final.name)
    assert taken is not None
    return Snapshot(
        final,
        taken,
        len(threads),
        sum(t.messages for t in threads.values()),
        sum(t.deleted for t in threads.values()),
        size,
    )


def _publish(tmp: Path, final: Path) -> Snapshot | None:
    """Rename the complete ``tmp`` to ``final``: None when done; the snapshot already there when
    ``final`` holds one (a directory rename never replaces a non-empty directory: the check and
    the act are one)."""
    try:
        tmp.rename(final)
    except OSError as exc:
        existing = published(final) if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) else None
        if existing is None:
            raise
        return existing
    return None


def backup_failure(dest: Path, exc: OSError) -> OutputError:
    """The destination could not take the snapshot: one line; nothing was deleted."""
    return write_failure(
        dest, exc, after="; no snapshot was written and none was deleted (the older ones stand)"
    )


def _revision_of(db: Path) -> str:
    revision = sqlite_files.schema_revision(db)
    if revision is None:
        raise StoreError(f"{db}: the copy carries no schema revision")
    return revision
