"""Revision 0009 (freshness): three NULL columns on tracked_thread arrive and leave, keeping every
row and the foreign key from sync_state, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from alembic import command
from sqlalchemy import Engine, inspect, text

from worker.store import schema
from worker.store.db import Mirror

NEW = {"check_interval", "last_changed_at", "last_checked_at"}


def _downgrade(engine: Engine, revision: str) -> None:
    cfg = schema._config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def _thread(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT * FROM tracked_thread")).mappings().one())


def test_0009_adds_null_schedule_columns_and_leaves_cleanly(mirror_url: str) -> None:
    m = Mirror(mirror_url, check=False)
    schema.upgrade(m.engine, "0008")  # its predecessor (replicas)
    with m.engine.begin() as conn:
        conn.execute(text("INSERT INTO tracked_thread (thread_id, added_at, state) VALUES"
                          " ('t', CURRENT_TIMESTAMP, 'active')"))  # fmt: skip
        conn.execute(
            text(
                "INSERT INTO sync_state (thread_id, initial_done, pages, consecutive_failures,"
                " added, changed, deleted, restored) VALUES ('t', TRUE, 1, 0, 0, 0, 0, 0)"
            )
        )
    before = _thread(m.engine)
    schema.upgrade(m.engine)
    upgraded = _thread(m.engine)
    assert {k: upgraded[k] for k in NEW} == dict.fromkeys(NEW)
    assert {k: v for k, v in upgraded.items() if k not in NEW} == before
    indexes = {i["name"] for i in inspect(m.engine).get_indexes("tracked_thread")}
    assert "ix_tracked_thread_last_changed_at" in indexes
    _downgrade(m.engine, "0008")
    assert _thread(m.engine) == before
    with m.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sync_state")).scalar_one() == 1
    m.dispose()
