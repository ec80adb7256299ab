"""A SQLite mirror file handled as a file (``worker/store/sqlite_files.py``): what the backup
copies and checks with, over messages whose text holds what no well-behaved server sends."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.hostile import HOSTILE
from worker.store import messages, sqlite_files
from worker.store.db import Mirror
from worker.store.repo import track_many
from worker.store.schema import current_revision
from worker.sync.plan import prepare

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
T = 1_700_000_000


def _fill(mirror: Mirror, thread_id: str, texts: list[str], *, first: int = 0) -> list[str]:
    objects = [
        {
            "id": f"msg_{first + i:03d}",
            "created_at": T + first + i,
            "role": "user",
            "metadata": {"note": text},
            "content": [{"type": "text", "text": {"value": text}}],
        }
        for i, text in enumerate(texts)
    ]
    with mirror.write() as session:
        track_many(session, [thread_id], now=NOW)
        rows = [(prepare(obj, thread_id), 0) for obj in objects]
        messages.write(session, thread_id, rows, [], NOW)
    return [str(o["id"]) for o in objects]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A mirror file: a hostile thread (its newest live message tombstoned) and a plain one."""
    db = tmp_path / "mirror.db"
    mirror = Mirror(f"sqlite:///{db}")
    try:
        ids = _fill(mirror, "thread_h", list(HOSTILE))
        _fill(mirror, "thread_p", ["plain"], first=100)
        with mirror.write() as session:
            messages.tombstone(session, [ids[-1]], NOW)
    finally:
        mirror.dispose()
    return db


def _facts(db: Path) -> dict[str, tuple[int, int, str | None]]:
    with sqlite_files.open_readonly(db, immutable=True) as conn:
        return {
            thread_id: (live, deleted, messages.file_newest_live(conn, thread_id))
            for thread_id, live, deleted in messages.file_counts(conn)
        }


EXPECTED = {
    "thread_h": (len(HOSTILE) - 1, 1, f"msg_{len(HOSTILE) - 2:03d}"),
    "thread_p": (1, 0, "msg_100"),
}


def test_an_online_copy_is_sound_and_counts_as_its_source(source: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.db"
    sqlite_files.copy_online(source, copy)
    sqlite_files.make_self_contained(copy)
    assert _facts(copy) == _facts(source) == EXPECTED
    for thorough in (False, True):
        with sqlite_files.open_readonly(copy, immutable=True) as conn:
            assert sqlite_files.integrity_check(conn, thorough=thorough) == "ok"
    mirror = Mirror(f"sqlite:///{copy}", create=False)
    try:
        assert sqlite_files.schema_revision(copy) == current_revision(mirror.engine)
    finally:
        mirror.dispose()
    assert not copy.with_name("copy.db-wal").exists()


def test_twin_snapshots_see_one_instant(source: Path, tmp_path: Path) -> None:
    """A commit after the twins began is in neither the copy nor the reader's view."""
    copy = tmp_path / "copy.db"
    mirror = Mirror(f"sqlite:///{source}", create=False)
    try:
        with sqlite_files.twin_snapshots(source) as twins:
            _fill(mirror, "thread_later", ["after the snapshot"], first=200)
            sqlite_files.copy_snapshot(twins.copier, copy)
            seen = {t for t, _, _ in messages.file_counts(twins.reader)}
    finally:
        mirror.dispose()
    assert seen == set(EXPECTED)
    assert _facts(copy) == EXPECTED
    assert set(_facts(source)) == {*EXPECTED, "thread_later"}


def test_a_missing_or_foreign_file_is_named_by_the_driver_s_words(tmp_path: Path) -> None:
    with (
        pytest.raises(sqlite_files.CannotOpen, match="unable to open"),
        sqlite_files.open_readonly(tmp_path / "absent.db"),
    ):
        pass
    foreign = tmp_path / "foreign.db"
    foreign.write_bytes(b"not a database, " * 512)
    with (
        pytest.raises(sqlite_files.Unreadable, match="not a database"),
        sqlite_files.open_readonly(foreign, immutable=True) as conn,
    ):
        sqlite_files.integrity_check(conn, thorough=False)
