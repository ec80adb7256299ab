"""The mirror's schema: created on first use, private on disk, refusing what it does not know."""

from __future__ import annotations

import stat
from hashlib import blake2b
from pathlib import Path
from typing import Any

import orjson
import pytest
from alembic import command
from sqlalchemy import Engine, text

from worker.errors import SchemaOutdatedError, StoreError
from worker.jsontext import loads
from worker.store import schema
from worker.store.db import Mirror
from worker.store.models import Message
from worker.store.repo import add_threads, thread_statuses
from worker.sync.plan import digest_of


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

    Sub-journals (statement and savepoint) stay in memory for the sync's small grouped writes
    (on disk each made a temporary file of its own, a third of a first sync's I/O), and only for
    those: a statement over the whole mirror would hold all of it in memory.
    """
    path = tmp_path / "m.db"
    mirror = Mirror(f"sqlite:///{path}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with mirror.read() as session:
        assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    with mirror.write(small=True) as session:  # the sync's grouped writes
        assert session.execute(text("PRAGMA temp_store")).scalar() == 2  # MEMORY
    with mirror.write() as session:  # anything else may change the whole mirror in a statement
        assert session.execute(text("PRAGMA temp_store")).scalar() == 0  # DEFAULT: a file
    with mirror.read() as session:
        assert session.execute(text("PRAGMA temp_store")).scalar() == 0


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


def test_0003_derives_metadata_from_raw_and_keeps_every_row(mirror_url: str) -> None:
    """A 0002 mirror, as the earlier threadsync wrote it, upgraded: every row and its raw as they
    were; ``metadata`` now read from ``raw`` (objects only); each digest the one the sync computes
    for that object now (or every stored message would look changed to the next reconcile); and
    back down again, old digests included."""
    m = Mirror(mirror_url, check=False)
    schema.upgrade(m.engine, "0002")
    rows = [
        ("msg_a", '{"id":"msg_a","metadata":{"k":"v","n":{"x":[1,2]}}}', '{"k":"v","n":{"x":[1,2]}}'),  # noqa: E501
        ("msg_b", '{"id":"msg_b","metadata":{}}', "{}"),
        ("msg_c", '{"id":"msg_c"}', "null"),
        ("msg_d", '{"id":"msg_d","metadata":"not an object"}', "null"),
    ]  # fmt: skip
    with m.engine.begin() as conn:
        conn.execute(text("INSERT INTO tracked_thread (thread_id, added_at, state) VALUES"
                          " ('t', CURRENT_TIMESTAMP, 'active')"))  # fmt: skip
        for mid, raw, meta in rows:
            conn.execute(
                text(
                    "INSERT INTO message (id, thread_id, created_at, tie_rank, raw, digest,"
                    " metadata, first_seen_at, updated_at) VALUES (:id, 't', 1, 0, :raw,"
                    " :digest, :meta, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"id": mid, "raw": raw, "digest": f"d-{mid}", "meta": meta},
            )
    schema.upgrade(m.engine)

    def read() -> list[tuple[str, str, str, Any]]:
        with m.engine.connect() as conn:
            found = conn.execute(
                text("SELECT id, raw, digest, metadata FROM message ORDER BY id")
            ).all()
        return [
            (r.id, r.raw, r.digest, None if r.metadata is None else _as_obj(r.metadata))
            for r in found
        ]

    synced = {mid: digest_of(orjson.dumps(orjson.loads(raw))) for mid, raw, _ in rows}
    assert read() == [
        ("msg_a", rows[0][1], synced["msg_a"], {"k": "v", "n": {"x": [1, 2]}}),
        ("msg_b", rows[1][1], synced["msg_b"], {}),
        ("msg_c", rows[2][1], synced["msg_c"], None),
        ("msg_d", rows[3][1], synced["msg_d"], None),
    ]
    app = Mirror(mirror_url)  # the app accepts it and reads the column
    with app.read() as session:
        assert session.get(Message, "msg_a").meta == {"k": "v", "n": {"x": [1, 2]}}  # type: ignore[union-attr]
    app.dispose()
    _downgrade(m.engine, "0002")  # and back: a plain column again, filled from raw
    back = read()
    assert [r[3] for r in back] == [{"k": "v", "n": {"x": [1, 2]}}, {}, None, None]
    assert [r[2] for r in back] == [
        blake2b(
            orjson.dumps(orjson.loads(raw), option=orjson.OPT_SORT_KEYS), digest_size=16
        ).hexdigest()
        for _, raw, _ in rows
    ]
    m.dispose()


def _downgrade(engine: Engine, revision: str) -> None:
    cfg = schema._config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def _as_obj(value: Any) -> Any:
    """A JSON column as read raw: text on SQLite, already parsed on PostgreSQL."""
    return loads(value) if isinstance(value, str) else value  # lone surrogates included


def test_0004_adds_an_empty_walk_memo_and_keeps_every_state(mirror_url: str) -> None:
    """The memo column arrives NULL (the next full walk of each thread records one) and leaves
    without touching the rest of the state."""
    m = Mirror(mirror_url, check=False)
    schema.upgrade(m.engine, "0003")
    with m.engine.begin() as conn:
        conn.execute(text("INSERT INTO tracked_thread (thread_id, added_at, state) VALUES"
                          " ('t', CURRENT_TIMESTAMP, 'active')"))  # fmt: skip
        conn.execute(
            text(
                "INSERT INTO sync_state (thread_id, initial_done, high_water_id, pages,"
                " consecutive_failures, added, changed, deleted, restored)"
                " VALUES ('t', TRUE, 'msg_z', 7, 0, 3, 0, 0, 0)"
            )
        )
    schema.upgrade(m.engine)

    def state() -> dict[str, Any]:
        with m.engine.connect() as conn:
            row = conn.execute(text("SELECT * FROM sync_state")).mappings().one()
        return dict(row)

    upgraded = state()
    assert upgraded["walk_memo"] is None
    assert (upgraded["high_water_id"], upgraded["pages"], upgraded["added"]) == ("msg_z", 7, 3)
    with m.engine.begin() as conn:
        conn.execute(text("UPDATE sync_state SET walk_memo = '{}'"))
    _downgrade(m.engine, "0003")
    downgraded = state()
    assert "walk_memo" not in downgraded
    assert downgraded == {k: v for k, v in upgraded.items() if k != "walk_memo"}
    m.dispose()


def test_0005_stores_any_unicode_and_keeps_every_row(mirror_url: str) -> None:
    """A 0004 mirror upgraded: every row as it was, ``metadata`` still derived from ``raw``; then
    a message holding U+0000 and a lone surrogate (as escapes) and a long role is stored, which
    0004 refused on PostgreSQL; downgrading is refused while it is there, and works without it."""
    m = Mirror(mirror_url, check=False)
    schema.upgrade(m.engine, "0004")
    insert = text(
        "INSERT INTO message (id, thread_id, created_at, tie_rank, role, raw, digest,"
        " first_seen_at, updated_at) VALUES (:id, 't', 1, 0, :role, :raw, 'd',"
        " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
    )
    with m.engine.begin() as conn:
        conn.execute(text("INSERT INTO tracked_thread (thread_id, added_at, state) VALUES"
                          " ('t', CURRENT_TIMESTAMP, 'active')"))  # fmt: skip
        conn.execute(insert, {"id": "msg_a", "role": "user", "raw": '{"metadata":{"k":"é😀"}}'})
        conn.execute(insert, {"id": "msg_b", "role": None, "raw": '{"metadata":"no"}'})
    schema.upgrade(m.engine)

    def read() -> list[tuple[str, str | None, str, Any]]:
        with m.engine.connect() as conn:
            found = conn.execute(text("SELECT id, role, raw, metadata FROM message ORDER BY id"))
            return [
                (r.id, r.role, r.raw, None if r.metadata is None else _as_obj(r.metadata))
                for r in found
            ]

    before = [
        ("msg_a", "user", '{"metadata":{"k":"é😀"}}', {"k": "é😀"}),
        ("msg_b", None, '{"metadata":"no"}', None),
    ]
    assert read() == before
    hostile = r'{"t":"\u0000\ud800","metadata":{"k\u0000":"\\u0000 \udfff","p":"v"}}'
    with m.engine.begin() as conn:
        conn.execute(insert, {"id": "msg_c", "role": "r" * 40, "raw": hostile})
    postgres = m.engine.dialect.name == "postgresql"
    held = (
        {"k\ufffd": "\\u0000 \ufffd", "p": "v"}
        if postgres
        else {"k\x00": "\\u0000 \udfff", "p": "v"}
    )
    assert read() == [*before, ("msg_c", "r" * 40, hostile, held)]
    if postgres:
        with pytest.raises(RuntimeError, match="1 mirrored messages hold U\\+0000"):
            _downgrade(m.engine, "0004")
        assert schema.current_revision(m.engine) == schema.HEAD
        with m.engine.begin() as conn:
            conn.execute(text("DELETE FROM message WHERE id = 'msg_c'"))
    _downgrade(m.engine, "0004")
    assert schema.current_revision(m.engine) == "0004"
    assert read()[:2] == before
    m.dispose()
