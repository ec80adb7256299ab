"""The mirror's schema: created on first use, private on disk, refusing what it does not know."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from worker.errors import SchemaOutdatedError, StoreError
from worker.store import schema
from worker.store.db import Mirror
from worker.store.repo import add_threads, thread_statuses


def test_new_mirror_is_created_at_head(mirror: Mirror) -> None:
    """Opening an empty database creates every table at the newest revision."""
    assert schema.current_revision(mirror.engine) == schema.head_revision()
    with mirror.write() as session:
        add_threads(session, ["thread_a"])
    with mirror.read() as session:
        assert [s.thread_id for s in thread_statuses(session)] == ["thread_a"]


def test_head_constant_matches_the_migration_scripts() -> None:
    """``schema.HEAD`` (read without importing Alembic) is the newest scripted revision."""
    assert schema.scripted_revisions()[0] == schema.HEAD


def test_sqlite_file_is_owner_only_and_in_wal_mode(tmp_path: Path) -> None:
    """The SQLite mirror holds conversations: it is created 0600 and journals in WAL mode.

    Sub-journals (statement and savepoint) stay in memory: on disk each write transaction made
    a temporary file of its own, a third of a first sync's I/O.
    """
    path = tmp_path / "m.db"
    mirror = Mirror(f"sqlite:///{path}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with mirror.read() as session:
        assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    with mirror.write() as session:
        assert session.execute(text("PRAGMA temp_store")).scalar() == 2  # MEMORY


def test_older_schema_asks_for_db_upgrade(mirror_url: str) -> None:
    """A mirror at an older revision is refused with the command that fixes it, and not changed."""
    m = Mirror(mirror_url)
    with m.write() as session:
        session.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    m.dispose()
    # '0000' is unknown, so the message says a newer threadsync made it.
    with pytest.raises(StoreError, match="unknown"):
        Mirror(mirror_url)
    m2 = Mirror(mirror_url, check=False)
    with m2.write() as session:
        session.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": "0001"})
    if schema.head_revision() != "0001":
        with pytest.raises(SchemaOutdatedError, match="threadsync db upgrade"):
            Mirror(mirror_url)


def test_foreign_tables_are_not_adopted(tmp_path: Path) -> None:
    """A database with a `message` table but no threadsync version is refused, not migrated."""
    path = tmp_path / "other.db"
    m = Mirror(f"sqlite:///{path}", check=False)
    with m.write() as session:
        session.execute(text("CREATE TABLE message (x INTEGER)"))
    with pytest.raises(StoreError, match="not made by threadsync"):
        Mirror(f"sqlite:///{path}")
