"""``threadsync import``: message objects saved elsewhere (JSON lines, as ``export --format
jsonl`` writes them, gzip accepted) into the mirror, as threads marked ``imported``.

The file is read twice: first every line is validated (a bad line is named with its number and
nothing is imported), then everything is written in one transaction, through the same planning a
synced ascending page goes through (an unchanged message is not rewritten, so importing the same
file again changes nothing). Each thread keeps the file's order, which is server order when the
file came from an export; messages already in the mirror and absent from the file stay as they
are. A line's ``"_threadsync": {"deleted_at": ...}`` (``export --include-deleted``) is taken off
the object and marks the message deleted, so an export, imported, exports identically.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlmodel import col

from worker.errors import ConfigError, StoreError, TransientError
from worker.store import messages, sync_state
from worker.store.db import Mirror
from worker.store.models import TrackedThread, utcnow
from worker.sync.plan import Incoming, prepare
from worker.sync.writer import write_page

EXTRA_KEY = "_threadsync"
ROLES = ("user", "assistant")


class ImportLineError(ConfigError):
    """A line of the file is not a message object threadsync can take; nothing was imported."""


def validate_message(obj: Any) -> str | None:
    """Why ``obj`` is not a message object as the API lists it, or None.

    The one place ``import`` checks a line's object, so that it can be pointed at the shared
    validator of listed messages (worker.client.models) once that exists.
    """
    if not isinstance(obj, dict):
        return "not a JSON object"
    if obj.get("object", "thread.message") != "thread.message":
        return f"object is {obj.get('object')!r}, not 'thread.message'"
    if not isinstance(obj.get("id"), str) or not obj["id"]:
        return "no string id"
    if type(obj.get("created_at")) is not int:
        return "no integer created_at"
    if obj.get("role") not in ROLES:
        return f"role {obj.get('role')!r} is neither user nor assistant"
    if not isinstance(obj.get("content"), list):
        return "content is not a list"
    metadata = obj.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        return "metadata is neither an object nor null"
    return None


@dataclass
class ImportReport:
    threads: dict[str, int] = field(default_factory=dict)  # thread id -> messages in the file
    added: int = 0
    changed: int = 0
    unchanged: int = 0


@dataclass(frozen=True)
class _Line:
    thread_id: str
    incoming: Incoming
    deleted_at: datetime | None


def _open(path: Path) -> IO[bytes]:
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise ConfigError(f"import: cannot read {path}: {exc.strerror}") from exc
    if handle.read(2) == b"\x1f\x8b":
        handle.seek(0)
        return gzip.GzipFile(fileobj=handle, mode="rb")  # type: ignore[return-value]
    handle.seek(0)
    return handle


def _lines(path: Path, thread_field: str) -> Iterator[_Line]:
    with _open(path) as handle:
        try:
            for number, text in enumerate(handle, start=1):
                if text.strip():
                    yield _parse(path, number, text, thread_field)
        except (OSError, EOFError) as exc:  # a damaged gzip stream
            raise ConfigError(f"import: {path} cannot be read to its end: {exc}") from exc


def _parse(path: Path, number: int, text: bytes, thread_field: str) -> _Line:
    def bad(why: str) -> ImportLineError:
        return ImportLineError(f"{path} line {number}: {why}; nothing was imported")

    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise bad(f"not JSON ({exc.msg})") from None
    why = validate_message(obj)
    if why is not None:
        raise bad(why)
    extra = obj.pop(EXTRA_KEY, None)
    deleted_at = None
    if extra is not None:
        raw_deleted = extra.get("deleted_at") if isinstance(extra, dict) else None
        try:
            deleted_at = datetime.fromisoformat(str(raw_deleted).replace("Z", "+00:00"))
        except ValueError:
            raise bad(f'"{EXTRA_KEY}" holds no ISO 8601 deleted_at') from None
    thread_id = obj.get(thread_field)
    if not isinstance(thread_id, str) or not thread_id or len(thread_id) > 128:
        raise bad(f"no thread id in the field {thread_field!r} (use --thread-field)")
    try:
        incoming = prepare(obj, thread_id)
    except TransientError as exc:
        raise bad(exc.message) from None
    return _Line(thread_id, incoming, deleted_at)


def check_file(path: Path, thread_field: str) -> dict[str, int]:
    """Validate every line; the threads and their message counts, in order of appearance."""
    threads: dict[str, int] = {}
    seen: set[str] = set()
    for line in _lines(path, thread_field):
        if line.incoming.id in seen:
            raise ImportLineError(
                f"{path}: message {line.incoming.id} appears twice; nothing was imported"
            )
        seen.add(line.incoming.id)
        threads[line.thread_id] = threads.get(line.thread_id, 0) + 1
    return threads


def import_file(mirror: Mirror, path: Path, thread_field: str = "thread_id") -> ImportReport:
    """Validate ``path`` whole, then import it in one transaction."""
    threads = check_file(path, thread_field)
    try:
        return _write(mirror, path, thread_field, threads)
    except DBAPIError as exc:
        # e.g. PostgreSQL refusing "\u0000" in text (the mirror derives a JSON column from raw).
        reason = str(exc.orig).splitlines()[0] if exc.orig is not None else type(exc).__name__
        raise StoreError(
            f"import: the mirror refused {path} ({reason}); nothing was imported"
        ) from exc


def _write(mirror: Mirror, path: Path, thread_field: str, threads: dict[str, int]) -> ImportReport:
    report = ImportReport(threads=threads)
    with mirror.write() as session:
        known = {
            row[0]: row[1]
            for row in session.execute(
                select(col(TrackedThread.thread_id), col(TrackedThread.state)).where(
                    col(TrackedThread.thread_id).in_(list(threads))
                )
            )
        }
        synced = [t for t, state in known.items() if state != "imported"]
        if synced:
            raise ConfigError(
                f"import: thread {synced[0]} is mirrored from the server; an import never mixes"
                " into a synced thread (remove it from the file, or import into another mirror)"
            )
        start = utcnow()
        for i, thread_id in enumerate(t for t in threads if t not in known):
            # Distinct times keep the file's thread order in exports (ordered by added_at).
            added = start + timedelta(microseconds=i)
            session.add(TrackedThread(thread_id=thread_id, added_at=added, state="imported"))
            session.flush()
            sync_state.add_imported(session, thread_id)
        session.flush()
        per_thread: dict[str, list[_Line]] = {t: [] for t in threads}
        for line in _lines(path, thread_field):
            per_thread[line.thread_id].append(line)
        now = utcnow()
        for thread_id, lines in per_thread.items():
            lines.sort(key=lambda line: line.incoming.created_at)  # stable: ties keep file order
            page = [line.incoming for line in lines]
            counts, _, _ = write_page(
                session, thread_id, page, direction="asc", ties="reverse", prev=None, now=now
            )
            report.added += counts.added
            report.changed += counts.changed
            report.unchanged += len(page) - counts.added - counts.changed
            for line in lines:
                if line.deleted_at is not None:
                    messages.mark_deleted(session, line.incoming.id, line.deleted_at)
    return report
