"""Checking a snapshot, cheapest and most telling first; the first thing wrong is named by file.

1. ``manifest.json`` parses, is ours, and matches its own checksum (an edited manifest).
2. Every listed file exists with its recorded size and SHA-256; nothing unlisted lies beside them.
3. ``mirror.db`` passes SQLite's ``quick_check`` (``integrity_check`` with ``thorough``) and its
   per-thread counts and newest message ids equal the manifest's.
4. Every line of ``messages.jsonl`` parses as a message object, and its per-thread counts equal the
   manifest's.
The database's checksum and SQLite check, and the JSONL's checksum, run in worker threads while
the JSONL is parsed here (SQLite and hashlib release the GIL); problems are still reported in the
order above.

Why ``quick_check`` by default, as restic's ``check`` and borg's ``check`` leave reading every
byte to an option: step 2 already proves every byte equals what the backup sealed, and
``quick_check`` proves the file is a sound SQLite database (pages, B-trees, records, constraints).
``integrity_check`` also matches every index entry against its row, four times slower on a
million messages: ``threadsync backup verify --thorough`` runs it.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from worker.backup.manifest import (
    DATABASE,
    FORMAT,
    MANIFEST,
    MESSAGES,
    SELF_KEY,
    ThreadCount,
    parse_threads,
    self_digest,
    sha256_of,
)
from worker.export.jsonl import DELETED_KEY
from worker.jsontext import JsonTextError, loads
from worker.store import messages, sqlite_files


class Damaged(Exception):
    """The first problem found; its message starts with the file's name."""


@dataclass
class VerifyReport:
    path: Path
    problem: str | None = None
    threads: int = 0
    messages: int = 0
    deleted: int = 0
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify(path: Path, *, thorough: bool = False) -> VerifyReport:
    """Verify one snapshot directory (``thorough``: SQLite's full ``integrity_check``)."""
    report = VerifyReport(Path(path))
    try:
        expected = _checks(report, thorough=thorough)
    except Damaged as exc:
        report.problem = str(exc)
        return report
    report.threads = len(expected)
    report.messages = sum(t.messages for t in expected.values())
    report.deleted = sum(t.deleted for t in expected.values())
    return report


def _manifest(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise Damaged(f"{path}: not a snapshot directory")
    file = path / MANIFEST
    if not file.is_file():
        raise Damaged(f"{MANIFEST}: missing")
    try:
        document = orjson.loads(file.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise Damaged(f"{MANIFEST}: not valid JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise Damaged(f"{MANIFEST}: not a threadsync backup manifest")
    if document.get(SELF_KEY) != self_digest(document):
        raise Damaged(f"{MANIFEST}: does not match its own checksum (edited or damaged)")
    return document


def _present(path: Path, document: dict[str, Any]) -> None:
    """Every listed file is there with its recorded size (hashes are checked while reading)."""
    files: dict[str, Any] = document["files"]
    for name in (DATABASE, MESSAGES):
        if name not in files:
            raise Damaged(f"{MANIFEST}: does not list {name}")
    for name, facts in sorted(files.items()):
        file = path / name
        if not file.is_file():
            raise Damaged(f"{name}: missing")
        size = file.stat().st_size
        if size != facts["bytes"]:
            raise Damaged(f"{name}: {size} bytes, the manifest says {facts['bytes']}")
        if name not in (DATABASE, MESSAGES) and sha256_of(file) != facts["sha256"]:
            raise Damaged(f"{name}: SHA-256 differs from the manifest (damaged)")
    for extra in sorted(
        p.name for p in path.iterdir() if p.name not in files and p.name != MANIFEST
    ):
        raise Damaged(f"{extra}: not listed in the manifest")


def _checked_database(
    pool: ThreadPoolExecutor, db: Path, facts: dict[str, Any], thorough: bool
) -> dict[str, ThreadCount]:
    """Checksum and integrity check side by side (both C code that releases the GIL).

    The checksum's verdict comes first: counting a damaged file could only mislead.
    """
    checksum = pool.submit(sha256_of, db)
    try:
        counts: dict[str, ThreadCount] | Damaged = _database_counts(db, thorough)
    except Damaged as exc:
        counts = exc
    if checksum.result() != facts["sha256"]:
        raise Damaged(f"{DATABASE}: SHA-256 differs from the manifest (damaged)")
    if isinstance(counts, Damaged):
        raise counts
    return counts


def _database_counts(db: Path, thorough: bool) -> dict[str, ThreadCount]:
    try:
        with sqlite_files.open_readonly(db, immutable=True) as conn:
            verdict = sqlite_files.integrity_check(conn, thorough=thorough)
            if verdict != "ok":
                raise Damaged(f"{DATABASE}: SQLite integrity check failed: {verdict}")
            counts: dict[str, ThreadCount] = {}
            for thread_id, live, deleted in messages.file_counts(conn):
                counts[thread_id] = ThreadCount(live, deleted)
            for thread_id, count in counts.items():
                count.newest_message_id = messages.file_newest_live(conn, thread_id)
    except sqlite_files.CannotOpen as exc:
        raise Damaged(f"{DATABASE}: cannot be opened ({exc})") from None
    except sqlite_files.Unreadable as exc:
        raise Damaged(f"{DATABASE}: unreadable ({exc})") from None
    return counts


def _jsonl_counts(file: Path) -> dict[str, ThreadCount]:
    """Per-thread counts; every line must parse as a message object."""
    counts: dict[str, ThreadCount] = {}
    with file.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                message = loads(line)  # a message may hold an escaped lone surrogate
                thread_id, message_id = message["thread_id"], message["id"]
            except (JsonTextError, KeyError, TypeError):
                raise Damaged(f"{MESSAGES}: line {number} is not a message object") from None
            count = counts.get(thread_id)
            if count is None:
                count = counts[thread_id] = ThreadCount()
            if DELETED_KEY in message:
                count.deleted += 1
            else:
                count.messages += 1
                count.newest_message_id = message_id
    return counts


def _compare(name: str, found: dict[str, ThreadCount], expected: dict[str, ThreadCount]) -> None:
    for thread_id in sorted(set(found) | set(expected)):
        have, want = found.get(thread_id), expected.get(thread_id)
        if have is None or want is None:
            where = "is missing" if have is None else "is not in the manifest"
            raise Damaged(f"{name}: thread {thread_id} {where}")
        if have != want:
            raise Damaged(
                f"{name}: thread {thread_id} has {have.messages} messages, {have.deleted} deleted,"
                f" newest {have.newest_message_id}; the manifest says {want.messages},"
                f" {want.deleted}, {want.newest_message_id}"
            )


def _checks(report: VerifyReport, *, thorough: bool) -> dict[str, ThreadCount]:
    document = _manifest(report.path)
    report.checked.append(MANIFEST)
    _present(report.path, document)
    expected = parse_threads(document)
    with ThreadPoolExecutor(max_workers=3) as pool:
        database: Future[dict[str, ThreadCount]] = pool.submit(
            _checked_database,
            pool,
            report.path / DATABASE,
            document["files"][DATABASE],
            thorough,
        )
        # Hashed apart, in big reads that release the GIL, while the lines are parsed here.
        jsonl_digest = pool.submit(sha256_of, report.path / MESSAGES)
        try:
            jsonl = _jsonl_counts(report.path / MESSAGES)
            jsonl_error: Damaged | None = None
        except Damaged as exc:
            jsonl, jsonl_error = {}, exc
        db_counts = database.result()  # the database's problem is named first
        jsonl_sha = jsonl_digest.result()
    if jsonl_sha and jsonl_sha != document["files"][MESSAGES]["sha256"]:
        raise Damaged(f"{MESSAGES}: SHA-256 differs from the manifest (damaged)")
    report.checked.append("checksums")
    _compare(DATABASE, db_counts, expected)
    report.checked.append(DATABASE)
    if jsonl_error is not None:
        raise jsonl_error
    _compare(MESSAGES, jsonl, expected)
    report.checked.append(MESSAGES)
    return expected
