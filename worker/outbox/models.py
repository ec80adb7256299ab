"""The outbox table: one row per message whose metadata the user edited locally.

Several edits to one message before a push coalesce into its row (one request). ``base`` is the
remote map the first of them started from, ``desired`` the complete map the user wants; the push
merges them three ways with the server's current map. ``revision`` grows with every local edit so
that a push finishing while the user edits again never overwrites the newer wish.

States: ``pending`` (to push), ``conflicted`` (held by the ``fail`` policy; ``conflict`` says
which keys), ``failed`` (a permanent error; ``last_error`` has the server's message; only
``push --retry-failed`` tries again), ``applied`` (done; kept so ``metadata show`` can say so).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Text
from sqlmodel import Field, SQLModel

from worker.store.models import utcnow

OPEN_STATES = ("pending", "conflicted", "failed")


class MetadataEdit(SQLModel, table=True):
    """A queued (or finished) metadata edit of one message."""

    __tablename__ = "metadata_edit"

    message_id: str = Field(primary_key=True, max_length=128)
    thread_id: str = Field(max_length=128, index=True)
    state: str = Field(default="pending", max_length=16, index=True)
    base: dict[str, Any] = Field(sa_column=Column("base", JSON, nullable=False))
    desired: dict[str, Any] = Field(sa_column=Column("desired", JSON, nullable=False))
    revision: int = 1
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_type=Text)
    conflict: list[dict[str, Any]] | None = Field(
        default=None, sa_column=Column("conflict", JSON, nullable=True)
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    applied_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
