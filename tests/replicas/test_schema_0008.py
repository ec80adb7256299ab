"""Revision 0008 (replicas) matches its models, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from worker.store import schema
from worker.store.db import Mirror

TABLES = {"daemon_replica", "job_slot", "lease_epoch"}


def test_replica_tables_and_lease_epoch_match_their_models(mirror: Mirror) -> None:
    assert schema.current_revision(mirror.engine) == schema.HEAD
    with mirror.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = compare_metadata(context, SQLModel.metadata)
    assert [d for d in diffs if any(name in repr(d) for name in TABLES)] == []
