"""The migration ledger: what was sent where, so that every item lands exactly once.

``migrate_thread``: one row per (target, thread): the conversation, how far it is, what the
mapping changed, the last error. ``target`` names the destination (profile and base URL), so the
same mirror can be migrated to a staging project and then to production.

``migrate_batch``: one row per request that carries items (the create, then each append of at
most 20): the message ids it holds, in order, its state and the item ids the service returned.
States: ``planned`` (written before anything is sent), ``sent`` (committed just before the POST:
from here the outcome is unknown until the answer is recorded), ``confirmed`` (the items are in
the conversation; ``item_ids`` when the service named them). A ``sent`` batch found on start is
settled by reading the conversation before anything is sent again. ``lost``: a create whose
outcome stayed unknown on a target that cannot list conversations, kept as a record (its
``created_at`` is when it was sent): an empty conversation may exist that nothing references.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Text
from sqlmodel import Field, SQLModel

from worker.store.models import utcnow


class MigrateThread(SQLModel, table=True):
    __tablename__ = "migrate_thread"

    target: str = Field(primary_key=True, max_length=512)
    thread_id: str = Field(primary_key=True, max_length=128)
    # Recorded in the conversation's metadata: finds a create whose answer was lost (Foundry).
    migration_id: str = Field(max_length=64)
    conversation_id: str | None = Field(default=None, max_length=128)
    state: str = Field(default="pending", max_length=16)  # pending | migrated | failed
    items: int = 0  # items confirmed in the conversation
    # The newest confirmed item, when the service named it: settling reads back to it.
    last_item_id: str | None = Field(default=None, max_length=128)
    dropped: int = 0
    replaced: int = 0
    # Creates whose outcome was unknown on a target that cannot list conversations (OpenAI):
    # each was sent again and may have left an unreachable, empty conversation behind, never
    # used (one ``lost`` batch each says when).
    lost_creates: int = 0
    migrated_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    last_error: str | None = Field(default=None, sa_type=Text)


class MigrateBatch(SQLModel, table=True):
    __tablename__ = "migrate_batch"
    __table_args__ = (Index("ix_migrate_batch_thread", "target", "thread_id", "seq"),)

    id: int | None = Field(default=None, primary_key=True)
    target: str = Field(max_length=512)
    thread_id: str = Field(max_length=128)
    seq: int  # the thread's requests in order; a lost create keeps the seq it was sent under
    state: str = Field(default="planned", max_length=16)  # planned | sent | confirmed | lost
    message_ids: str = Field(sa_type=Text)  # JSON list, in order
    item_ids: str | None = Field(default=None, sa_type=Text)  # JSON list, when known
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
