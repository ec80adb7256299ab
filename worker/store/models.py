"""The mirror's tables.

Every message row keeps the object exactly as last received (``raw``, unknown fields included) plus
the columns a user queries. Server order is ``(created_at, tie_rank)``: ``created_at`` is whole
seconds and ties are common, so ``tie_rank`` records the server's order inside one second (see
``worker/sync/order.py``). Rows are never physically removed: a message the server stops listing
gets ``deleted_at``.

Column names are plain and stable: users query this database directly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Computed, DateTime, Index, Text
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(**kwargs: Any) -> Any:
    return Field(sa_type=DateTime(timezone=True), **kwargs)


class TrackedThread(SQLModel, table=True):
    """A thread the user asked threadsync to mirror (there is no list-threads endpoint)."""

    __tablename__ = "tracked_thread"

    thread_id: str = Field(primary_key=True, max_length=128)
    added_at: datetime = _ts(default_factory=utcnow)
    state: str = Field(default="active", max_length=16)  # active | gone | paused
    gone_at: datetime | None = _ts(default=None)
    # Scheduling and (future) row leases for several daemons sharing one PostgreSQL mirror:
    # `SELECT ... WHERE next_sync_at <= now FOR UPDATE SKIP LOCKED`.
    next_sync_at: datetime | None = _ts(default=None, index=True)
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_until: datetime | None = _ts(default=None)
    # The fencing token: +1 at every claim; a write by an older claim's holder is refused.
    lease_epoch: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # Freshness under a budget (worker/daemon/freshness.py): the thread's own check interval
    # (seconds; NULL: never checked, taken as daemon.min_interval), when a pass last found a
    # change, and when a pass last succeeded. `last_changed_at` is indexed for the lag gauges.
    check_interval: float | None = Field(default=None)
    last_changed_at: datetime | None = _ts(default=None, index=True)
    last_checked_at: datetime | None = _ts(default=None)


class SyncState(SQLModel, table=True):
    """Per-thread cursors, progress and failures."""

    __tablename__ = "sync_state"

    thread_id: str = Field(primary_key=True, foreign_key="tracked_thread.thread_id", max_length=128)
    # The first sync walks newest-first with `after`; this is where it resumes.
    initial_done: bool = False
    initial_after: str | None = Field(default=None, max_length=128)
    # The newest message seen; later passes walk forward from it.
    high_water_id: str | None = Field(default=None, max_length=128)
    pages: int = 0
    last_sync_at: datetime | None = _ts(default=None)
    last_success_at: datetime | None = _ts(default=None)
    last_full_at: datetime | None = _ts(default=None)
    last_error: str | None = Field(default=None, sa_type=Text)
    last_error_kind: str | None = Field(default=None, max_length=32)
    consecutive_failures: int = 0
    parked_until: datetime | None = _ts(default=None)
    added: int = 0
    changed: int = 0
    deleted: int = 0
    restored: int = 0
    # What the last full walk that found nothing to write saw (worker/sync/memo.py): lets the
    # next one skip parsing pages that come back byte for byte. A cache: safe to set to NULL.
    walk_memo: str | None = Field(default=None, sa_type=Text)


class Message(SQLModel, table=True):
    """One mirrored message."""

    __tablename__ = "message"
    __table_args__ = (Index("ix_message_order", "thread_id", "created_at", "tie_rank"),)

    id: str = Field(primary_key=True, max_length=128)
    thread_id: str = Field(max_length=128)
    created_at: int = Field(sa_type=BigInteger)
    tie_rank: int = Field(default=0, sa_type=BigInteger)
    # The fields as received (any length: migration 0006), except that U+0000 and lone
    # surrogates read as U+FFFD (``worker.jsontext.column_text``); ``raw`` keeps them.
    role: str | None = Field(default=None, sa_type=Text)
    status: str | None = Field(default=None, sa_type=Text, index=True)
    run_id: str | None = Field(default=None, sa_type=Text)
    assistant_id: str | None = Field(default=None, sa_type=Text)
    # Derived from ``raw`` by the database (migrations 0003 and 0006; the DDL there is per
    # backend, this expression is SQLite's): the metadata object, or NULL. threadsync never
    # writes it. On PostgreSQL, whose text cannot hold them, U+0000 and lone surrogates read as
    # U+FFFD in this column (SQLite keeps their escapes); ``raw`` keeps them exactly.
    meta: dict[str, Any] | None = Field(
        default=None,
        sa_column=Column(
            "metadata",
            JSON,
            Computed(
                "CASE json_type(raw, '$.metadata') WHEN 'object'"
                " THEN json_extract(raw, '$.metadata') END",
                persisted=False,
            ),
        ),
    )
    raw: str = Field(sa_type=Text)
    digest: str = Field(max_length=32)
    first_seen_at: datetime = _ts(default_factory=utcnow)
    updated_at: datetime = _ts(default_factory=utcnow)
    deleted_at: datetime | None = _ts(default=None)


class SyncRun(SQLModel, table=True):
    """One `sync` (or reconcile) invocation over a set of threads."""

    __tablename__ = "sync_run"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)  # sync | full
    started_at: datetime = _ts(default_factory=utcnow)
    finished_at: datetime | None = _ts(default=None)
    # ok | failed | interrupted; NULL while running (and for runs recorded before 0009).
    outcome: str | None = Field(default=None, max_length=16)
    threads_ok: int = 0
    threads_failed: int = 0
    added: int = 0
    changed: int = 0
    deleted: int = 0
    restored: int = 0
    requests: int = 0


class SyncRunThread(SQLModel, table=True):
    """What one run did to one thread."""

    __tablename__ = "sync_run_thread"

    run_id: int = Field(primary_key=True, foreign_key="sync_run.id")
    thread_id: str = Field(primary_key=True, max_length=128)
    ok: bool = True
    error: str | None = Field(default=None, sa_type=Text)
    added: int = 0
    changed: int = 0
    deleted: int = 0
    restored: int = 0
    requests: int = 0


class MirrorMeta(SQLModel, table=True):
    """Small facts about the mirror: learned server conventions, the daemon's heartbeat."""

    __tablename__ = "mirror_meta"

    key: str = Field(primary_key=True, max_length=128)
    value: str = Field(sa_type=Text)
    updated_at: datetime = _ts(default_factory=utcnow)


class DaemonReplica(SQLModel, table=True):
    """One running daemon process in replicas mode (a new row per process start)."""

    __tablename__ = "daemon_replica"

    replica_id: str = Field(primary_key=True, max_length=128)
    hostname: str = Field(max_length=255)
    pid: int
    version: str = Field(max_length=32)
    started_at: datetime = _ts(default_factory=utcnow)
    heartbeat_at: datetime = _ts(default_factory=utcnow)
    draining: bool = False


class JobSlot(SQLModel, table=True):
    """A periodic job's lease and the schedule slot it last ran for (once across replicas)."""

    __tablename__ = "job_slot"

    name: str = Field(primary_key=True, max_length=32)
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_until: datetime | None = _ts(default=None)
    lease_epoch: int = 0
    slot: datetime | None = _ts(default=None)
    slot_done_at: datetime | None = _ts(default=None)
    last_outcome: str | None = Field(default=None, max_length=16)
