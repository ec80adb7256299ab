"""The ledger's schema (revision 0007) matches its models, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import worker.migrate.models  # noqa: F401 - registers the ledger tables
from worker.store import schema
from worker.store.db import Mirror

LEDGER = {"migrate_thread", "migrate_batch"}


def _touches_ledger(diff: object) -> bool:
    text = repr(diff)
    return any(name in text for name in LEDGER)


def test_ledger_tables_match_their_models(mirror: Mirror) -> None:
    # The head has moved on (0008: replicas, 0009: freshness); the ledger's revision is still in
    # the history, right below them.
    assert schema.current_revision(mirror.engine) == schema.HEAD == "0009"
    assert schema.scripted_revisions()[:3] == ["0009", "0008", "0007"]
    with mirror.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = compare_metadata(context, SQLModel.metadata)
    assert [d for d in diffs if _touches_ledger(d)] == []
