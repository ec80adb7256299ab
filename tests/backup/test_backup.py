"""Backups end to end: round trip on SQLite and PostgreSQL, damage named by file, overlap refused,
a backup taken while a sync writes is consistent, retention only after success."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import orjson
import pytest
from alembic import command
from sqlalchemy import create_engine, text

from tests.conftest import PG_URL, _pg_admin_url, _pg_unavailable
from tests.hostile import hostile_thread, normalised
from worker.backup import BackupBusyError, list_backups, restore, run_backup, verify
from worker.backup import snapshot as snapshot_module
from worker.backup.lock import backup_lock
from worker.backup.manifest import DATABASE, MANIFEST, MESSAGES, SELF_KEY, self_digest, sha256_of
from worker.config import BackupSettings, Settings
from worker.emulator import Emulator, ManualClock
from worker.errors import ConfigError, StoreError
from worker.export.jsonl import write_jsonl
from worker.export.source import Selection, iter_rows
from worker.jsontext import loads
from worker.store import schema as schema_module
from worker.store.db import Mirror
from worker.store.repo import add_threads
from worker.sync.runner import sync_threads
from worker.testing import emulated_client

pytestmark = pytest.mark.anyio


def settings_for(url: str, **keep: int) -> Settings:
    return Settings(database_url=url, backup=BackupSettings(**keep))


def export_bytes(mirror: Mirror) -> bytes:
    out = _Sink()
    write_jsonl(iter_rows(mirror, Selection(include_deleted=True)), out)  # type: ignore[arg-type]
    return b"".join(out.parts)


class _Sink:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)


async def seeded(mirror: Mirror, *, threads: int = 3, messages: int = 60) -> Emulator:
    emulator = Emulator(clock=ManualClock(), seed=9)
    ids = emulator.seed(seed=21, threads=threads, messages=messages)
    with mirror.write() as session:
        add_threads(session, ids)
    gone = emulator.truth()["threads"][ids[0]][1]["id"]
    async with emulated_client(emulator) as client:
        assert (await sync_threads(client, mirror)).ok
        emulator.delete_message(ids[0], gone)
        assert (await sync_threads(client, mirror, full=True)).ok
    return emulator


async def test_round_trip_restores_an_identical_mirror(
    mirror: Mirror, mirror_url: str, tmp_path: Path, pg_or_sqlite_target: str
) -> None:
    """sync, backup, verify, restore into a new database, export: identical to the original."""
    emulator = await seeded(mirror)
    async with emulated_client(emulator) as client:
        result = await run_backup(settings_for(mirror_url), mirror, client, dest=tmp_path / "b")
    assert result.sync_ok
    report = verify(result.snapshot.path)
    assert report.ok, report.problem
    assert report.messages == result.snapshot.messages == 179
    assert report.deleted == 1
    restored = restore(result.snapshot.path, pg_or_sqlite_target)
    assert restored.messages == 180
    copy = Mirror(pg_or_sqlite_target)
    try:
        assert export_bytes(copy) == export_bytes(mirror)
        live = Selection()
        assert [r.raw for r in iter_rows(copy, live)] == [r.raw for r in iter_rows(mirror, live)]
    finally:
        copy.dispose()
    lines = (result.snapshot.path / MESSAGES).read_bytes()
    assert lines == export_bytes(mirror)
    with pytest.raises(ConfigError, match="not empty"):
        restore(result.snapshot.path, pg_or_sqlite_target)
    assert restore(result.snapshot.path, pg_or_sqlite_target, force=True).replaced


@pytest.fixture(params=["sqlite-target", "postgresql-target"])
def pg_or_sqlite_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, empty restore target (its own PostgreSQL schema, apart from ``pg_url``'s)."""
    if request.param == "sqlite-target":
        yield f"sqlite:///{tmp_path / 'restored.db'}"
        return
    reason = _pg_unavailable()
    if reason is not None:
        pytest.skip(reason)
    schema = f"ts_restore_{uuid.uuid4().hex[:10]}"
    engine = create_engine(_pg_admin_url())
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])


def _edit_manifest(path: Path) -> None:
    document = orjson.loads(path.read_bytes())
    first = next(iter(document["threads"]))
    document["threads"][first]["messages"] += 1
    path.write_bytes(orjson.dumps(document))


DAMAGE: dict[str, tuple[str, Any, str]] = {
    "flipped byte in the database": (DATABASE, lambda p: _flip_byte(p, 5000), DATABASE),
    "flipped byte in the jsonl": (MESSAGES, lambda p: _flip_byte(p, 100), MESSAGES),
    "missing database": (DATABASE, lambda p: p.unlink(), DATABASE),
    "missing jsonl": (MESSAGES, lambda p: p.unlink(), MESSAGES),
    "truncated jsonl": (MESSAGES, _truncate, MESSAGES),
    "edited manifest": (MANIFEST, _edit_manifest, MANIFEST),
    "missing manifest": (MANIFEST, lambda p: p.unlink(), MANIFEST),
}


@pytest.fixture(scope="module")
def good_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("good")
    mirror = Mirror(f"sqlite:///{base / 'm.db'}")

    async def make() -> Path:
        await seeded(mirror, threads=2, messages=40)
        result = await run_backup(
            settings_for(str(mirror.url)), mirror, None, dest=base / "b", sync_first=False
        )
        return result.snapshot.path

    try:
        return anyio.run(make)
    finally:
        mirror.dispose()


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damage_fails_verify_naming_the_file(
    good_snapshot: Path, tmp_path: Path, case: str
) -> None:
    """Each kind of damage makes verify fail with a problem that starts with the file's name;
    restore refuses the snapshot for the same reason."""
    snap = tmp_path / good_snapshot.name
    shutil.copytree(good_snapshot, snap)
    assert verify(snap).ok
    target, damage, named = DAMAGE[case]
    damage(snap / target)
    report = verify(snap)
    assert not report.ok
    assert report.problem is not None
    assert report.problem.startswith(f"{named}:"), report.problem
    with pytest.raises(StoreError, match=named.replace(".", r"\.")):
        restore(snap, f"sqlite:///{tmp_path / 'r.db'}")


def test_a_stray_file_is_named(good_snapshot: Path, tmp_path: Path) -> None:
    """A file the manifest does not list is reported by name."""
    snap = tmp_path / good_snapshot.name
    shutil.copytree(good_snapshot, snap)
    (snap / "notes.txt").write_text("hi")
    assert verify(snap).problem == "notes.txt: not listed in the manifest"


async def test_overlapping_backups_the_second_refuses(
    mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one backup holds the destination, a second raises BackupBusyError naming the holder
    and leaves nothing behind; the first completes and verifies."""
    await seeded(mirror, threads=1, messages=30)
    dest = tmp_path / "b"
    dest.mkdir()
    inside, release = threading.Event(), threading.Event()
    real = snapshot_module.copy_and_export

    def slow_copy(m: Mirror, db: Path, target: Path) -> Any:
        inside.set()
        release.wait(30)
        return real(m, db, target)

    settings = settings_for(str(mirror.url))
    results: list[Any] = []

    async def first() -> None:
        results.append(await run_backup(settings, mirror, None, dest=dest, sync_first=False))

    monkeypatch.setattr(snapshot_module, "copy_and_export", slow_copy)
    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await anyio.to_thread.run_sync(inside.wait, 30)
        with pytest.raises(BackupBusyError, match=r"pid \d+"):
            await run_backup(settings, mirror, None, dest=dest, sync_first=False)
        assert list_backups(dest) == []
        release.set()
    (only,) = list_backups(dest)
    assert only.path == results[0].snapshot.path
    assert verify(only.path).ok
    assert sorted(p.name for p in dest.iterdir()) == [".threadsync-backup.lock", only.path.name]


def test_lock_is_released_when_the_holder_finishes(tmp_path: Path) -> None:
    """The lock is held only for the block: a later backup gets it."""
    with backup_lock(tmp_path), pytest.raises(BackupBusyError), backup_lock(tmp_path):
        pass
    with backup_lock(tmp_path):
        pass


async def test_backup_while_a_sync_writes_is_consistent(mirror: Mirror, tmp_path: Path) -> None:
    """Snapshots taken between the pages of a running first sync verify, and their counts match
    the manifest (each is one transaction's view, never half a page)."""
    emulator = Emulator(clock=ManualClock(), seed=3)
    ids = emulator.seed(seed=8, threads=4, messages=300)
    with mirror.write() as session:
        add_threads(session, ids)
    settings = settings_for(str(mirror.url))
    checks: list[Any] = []
    done = anyio.Event()

    async def keep_backing_up() -> None:
        while not done.is_set():
            result = await run_backup(settings, mirror, None, dest=tmp_path / "b", sync_first=False)
            # Verified at once: retention may remove it once newer snapshots pile up.
            checks.append(await anyio.to_thread.run_sync(verify, result.snapshot.path))
            await anyio.lowlevel.checkpoint()

    async with emulated_client(emulator) as client, anyio.create_task_group() as tg:
        tg.start_soon(keep_backing_up)
        report = await sync_threads(client, mirror, concurrency=2, page_limit=20)
        done.set()
    assert report.ok
    assert checks
    for check in checks:
        assert check.ok, check.problem
    final = await run_backup(settings, mirror, None, dest=tmp_path / "c", sync_first=False)
    assert final.snapshot.messages == 1200


def fixed(when: datetime) -> Callable[[], datetime]:
    return lambda: when


async def test_retention_after_success_and_never_on_failure(
    mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """keep_last=2: the third backup removes the oldest; a failing backup removes nothing."""
    await seeded(mirror, threads=1, messages=10)
    dest = tmp_path / "b"
    settings = settings_for(
        str(mirror.url), keep_last=2, keep_daily=0, keep_weekly=0, keep_monthly=0
    )
    start = datetime(2026, 1, 1, tzinfo=UTC)
    made = []
    for i in range(3):
        result = await run_backup(
            settings,
            mirror,
            None,
            dest=dest,
            sync_first=False,
            now=fixed(start + timedelta(days=i)),
        )
        made.append(result.snapshot.path)
    assert [b.path for b in list_backups(dest)] == made[1:]

    def boom(m: Mirror, db: Path, target: Path) -> Any:
        raise StoreError("disk on fire")

    monkeypatch.setattr(snapshot_module, "copy_and_export", boom)
    with pytest.raises(StoreError, match="disk on fire"):
        await run_backup(
            settings,
            mirror,
            None,
            dest=dest,
            sync_first=False,
            now=fixed(start + timedelta(days=9)),
        )
    assert [b.path for b in list_backups(dest)] == made[1:]
    assert not [p for p in dest.iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("thorough", [False, True])
def test_a_sound_checksum_over_a_broken_database_still_fails(
    good_snapshot: Path, tmp_path: Path, thorough: bool
) -> None:
    """Damage made before the checksum was taken (the manifest re-sealed over it) is still found
    by SQLite's own check, quick (default) or thorough, and named."""
    snap = tmp_path / good_snapshot.name
    shutil.copytree(good_snapshot, snap)
    db = snap / DATABASE
    data = bytearray(db.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    data[page_size] = 0x07  # page 2's b-tree page type: not a valid type
    db.write_bytes(bytes(data))
    document = orjson.loads((snap / MANIFEST).read_bytes())
    document["files"][DATABASE] = {"bytes": len(data), "sha256": sha256_of(db)}
    document[SELF_KEY] = self_digest(document)
    (snap / MANIFEST).write_bytes(orjson.dumps(document))
    report = verify(snap, thorough=thorough)
    assert not report.ok
    assert report.problem is not None
    assert report.problem.startswith(f"{DATABASE}:"), report.problem
    assert "integrity" in report.problem or "unreadable" in report.problem, report.problem


async def test_a_mirror_this_user_cannot_write_is_copied_then_exported(
    mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No write lock can be taken on a read-only mirror file, so the snapshot is copied first
    and exported from the copy; it still verifies and holds every message."""
    if not mirror.is_sqlite:
        pytest.skip("file permissions are SQLite's")
    await seeded(mirror, threads=2, messages=25)
    calls: list[str] = []
    real = snapshot_module.copy_database

    def tracked(m: Mirror, db: Path) -> None:
        calls.append("copy")
        real(m, db)

    monkeypatch.setattr("worker.backup.snapshot.os.access", lambda path, mode: False)
    monkeypatch.setattr(snapshot_module, "copy_database", tracked)
    settings = settings_for(str(mirror.url))
    result = await run_backup(settings, mirror, None, dest=tmp_path / "b", sync_first=False)
    assert calls == ["copy"]
    assert verify(result.snapshot.path).ok
    assert result.snapshot.messages + result.snapshot.deleted == 50


def test_a_snapshot_from_an_earlier_schema_is_restored_through_an_upgraded_copy(
    good_snapshot: Path, tmp_path: Path, pg_or_sqlite_target: str
) -> None:
    """A backup made before migration 0003 (metadata stored as its own column) restores into a
    current mirror: a private copy is upgraded first, and the backup itself is left as it was."""
    snap = tmp_path / good_snapshot.name
    shutil.copytree(good_snapshot, snap)
    db = snap / DATABASE
    old = create_engine(f"sqlite:///{db}")
    cfg = schema_module._config()
    with old.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
    with old.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=DELETE")  # one self-contained file again
    old.dispose()
    document = orjson.loads((snap / MANIFEST).read_bytes())
    document["files"][DATABASE] = {"bytes": db.stat().st_size, "sha256": sha256_of(db)}
    document["schema_revision"] = "0002"
    document[SELF_KEY] = self_digest(document)
    (snap / MANIFEST).write_bytes(orjson.dumps(document))
    sealed = db.read_bytes()

    restored = restore(snap, pg_or_sqlite_target)

    assert restored.messages == 80
    assert db.read_bytes() == sealed  # the backup is untouched
    source = Mirror(f"sqlite:///{good_snapshot / DATABASE}", check=False)
    copy = Mirror(pg_or_sqlite_target)
    try:
        assert export_bytes(copy) == export_bytes(source)
        with copy.read() as session:
            metas = session.execute(text("SELECT count(*) FROM message WHERE metadata IS NOT NULL"))
            assert metas.scalar_one() > 0  # derived from raw in the target
    finally:
        copy.dispose()
        source.dispose()


def test_a_snapshot_from_an_unknown_schema_is_refused(good_snapshot: Path, tmp_path: Path) -> None:
    snap = tmp_path / good_snapshot.name
    shutil.copytree(good_snapshot, snap)
    db = snap / DATABASE
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    conn.close()
    document = orjson.loads((snap / MANIFEST).read_bytes())
    document["files"][DATABASE] = {"bytes": db.stat().st_size, "sha256": sha256_of(db)}
    document[SELF_KEY] = self_digest(document)
    (snap / MANIFEST).write_bytes(orjson.dumps(document))
    with pytest.raises(StoreError, match="9999, unknown to this threadsync"):
        restore(snap, f"sqlite:///{tmp_path / 'target.db'}")


async def test_hostile_text_backs_up_and_restores_exactly(
    mirror: Mirror, mirror_url: str, tmp_path: Path, pg_or_sqlite_target: str
) -> None:
    """Messages holding U+0000, lone surrogates and astral characters in every field: the
    snapshot (a SQLite copy, also of a PostgreSQL mirror) and its JSONL carry them exactly, it
    verifies, and a restore into either backend exports the same bytes."""
    emulator = Emulator(clock=ManualClock(), seed=5)
    ids = [*emulator.seed(seed=5, threads=1, messages=20), hostile_thread(emulator)]
    with mirror.write() as session:
        add_threads(session, ids)
    async with emulated_client(emulator) as client:
        result = await run_backup(settings_for(mirror_url), mirror, client, dest=tmp_path / "b")
    assert result.sync_ok
    report = verify(result.snapshot.path)
    assert report.ok, report.problem
    lines = (result.snapshot.path / MESSAGES).read_bytes()
    assert lines == export_bytes(mirror)
    truth = emulator.truth()["threads"]
    assert [normalised(loads(line)) for line in lines.splitlines()] == [
        normalised(m) for t in ids for m in truth[t]
    ]
    restore(result.snapshot.path, pg_or_sqlite_target)
    copy = Mirror(pg_or_sqlite_target)
    try:
        assert export_bytes(copy) == lines
        columns = text("SELECT id, role, status FROM message ORDER BY id")
        with copy.engine.connect() as restored, mirror.engine.connect() as original:
            assert restored.execute(columns).all() == original.execute(columns).all()
    finally:
        copy.dispose()
