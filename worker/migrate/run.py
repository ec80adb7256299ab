"""``threadsync migrate``: each chosen thread becomes one conversation, each message one item,
exactly once, whatever fails and whenever the process dies.

Per thread: settle any batch whose outcome is unknown, plan the messages not yet confirmed in
batches of 20 behind the create, then per batch: commit ``sent``, POST, commit ``confirmed``
with the item ids. Settling reads the conversation's newest items back to
the last confirmed one and compares what is there with the batch (role and content, in order):
all of it there -> confirmed; nothing -> planned again; anything else -> the thread fails
without sending (someone else wrote to the conversation). A create whose answer was lost is
found again by its ``migration_id`` metadata where the target lists conversations (Foundry), so
there the create carries the first batch. Where it cannot (OpenAI, Azure), nothing can find it:
its id was only in the lost answer. There the create is sent empty (metadata only) and every
message appended after it, so a lost create leaves at most an empty conversation; it is recorded
(a ``lost`` batch, counted in ``lost_creates``), sent again, and the lost one never referenced.
That costs one request per thread: one create plus one append per 20 messages (or part of 20),
against Foundry's one create plus one append per further 20.

Under a ``guard`` (the daemon's migrate job in replicas mode: its slot lease,
``worker/daemon/slots.py``) every ledger change checks the lease in its own transaction, and each
create, append and metadata write is preceded by a check in a transaction of its own: a run whose
lease was lost records nothing more and sends nothing more (its report says ``aborted``); the
replica now holding the slot settles what it left ``sent``. README, "What runs exactly once",
says what no check can fence (a request paused past the lease after its check).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import orjson
from sqlmodel import Session

from worker.client.api import ApiClient
from worker.errors import PermanentError, ThreadsyncError, TransientError, WriteRefused
from worker.logs import get_logger
from worker.migrate import ledger
from worker.migrate.ledger import Confirmation, Plan
from worker.migrate.mapping import (
    MAX_BATCH,
    Change,
    Mapped,
    MappingError,
    Policy,
    Source,
    conversation_metadata,
    map_message,
    same_items,
)
from worker.migrate.models import MigrateBatch, MigrateThread
from worker.migrate.target import ConversationsClient
from worker.store.db import Mirror

log = get_logger()
T = TypeVar("T")
Guard = Callable[[Session], None]  # raises WriteRefused once the job's lease is lost

SEND_ATTEMPTS = 3  # a batch settled as absent after an unknown outcome is sent again, this often
SCAN_PAGES = 20  # conversations read (x100, newest first) to find a create whose answer was lost
PREFETCH = 200  # unsent messages of a thread read at once (more: one read per batch)


class ConflictError(ThreadsyncError):
    """The conversation holds items this migration did not send: nothing more is sent to it."""


@dataclass
class ThreadOutcome:
    thread_id: str
    conversation_id: str | None = None
    items: int = 0  # items confirmed by this run (dry run: items it would send)
    requests: int = 0  # creates and appends sent (dry run: those it would make)
    # Every change of a dry run; of a real run only the thread's own (metadata left out), the
    # message parts being counted (a 50,000-message run would otherwise hold ~20,000 of them).
    changes: list[Change] = field(default_factory=list)
    dropped: int = 0
    replaced: int = 0
    settled: int = 0
    lost_creates: int = 0  # creates of unknown outcome this run: an empty orphan may exist
    error: str | None = None


@dataclass
class MigrateReport:
    threads: list[ThreadOutcome]
    dry_run: bool = False
    aborted: str | None = None  # why the run stopped early (its lease lost: nothing more sent)

    @property
    def failed(self) -> list[ThreadOutcome]:
        return [t for t in self.threads if t.error]

    def totals(self) -> dict[str, int]:
        return {
            "threads": len(self.threads),
            "failed": len(self.failed),
            "items": sum(t.items for t in self.threads),
            "requests": sum(t.requests for t in self.threads),
            "dropped": sum(t.dropped for t in self.threads),
            "replaced": sum(t.replaced for t in self.threads),
            "lost_creates": sum(t.lost_creates for t in self.threads),
        }


@dataclass
class Migration:
    """One run's context: the mirror, the target (None for a dry run), the policy."""

    mirror: Mirror
    target: str  # the ledger's name for the destination
    client: ConversationsClient | None
    policy: Policy = field(default_factory=Policy)
    source_profile: str = "azure"
    concurrency: int = 8
    clock: Callable[[], float] = time.time
    # The source service, when configured: each thread's own metadata is read from it for the
    # conversation's metadata (the mirror keeps messages, not thread objects). Best effort: a
    # thread the source no longer has (404 after the sunset) simply adds none.
    source: ApiClient | None = None
    # Whether the target lists conversations, for a dry run (a real run asks its client).
    lists_conversations: bool = False
    # The daemon's migrate job in replicas mode: its slot lease, checked in every ledger change
    # and, in a transaction of its own, right before every create, append and metadata write.
    guard: Guard | None = None
    aborted: str | None = None
    _thread_meta: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def creates_with_items(self) -> bool:
        """Only where a lost create can be found again (by listing) may it carry messages."""
        if self.client is not None:
            return self.client.lists_conversations
        return self.lists_conversations

    async def run(self, thread_ids: Sequence[str] | None, since: int | None) -> MigrateReport:
        chosen = await self.mirror.run(ledger.candidates, self.mirror, thread_ids, since)
        outcomes = [ThreadOutcome(c.thread_id, error=c.reason or None) for c in chosen]
        limiter = anyio.CapacityLimiter(self.concurrency)

        async def one(outcome: ThreadOutcome) -> None:
            async with limiter:
                if self.aborted is None:
                    await self.thread(outcome)

        async with anyio.create_task_group() as tg:
            for candidate, outcome in zip(chosen, outcomes, strict=True):
                if candidate.eligible:
                    tg.start_soon(one, outcome)
        return MigrateReport(outcomes, dry_run=self.client is None, aborted=self.aborted)

    async def thread(self, out: ThreadOutcome) -> None:
        """Migrate one thread; any failure is recorded on ``out`` and in the ledger."""
        final = False
        try:
            if self.client is None:
                await self._dry(out)
                return
            final = await self._migrate(out, self.client)
        except WriteRefused as exc:
            # The lease is lost: this run sends and records nothing more, for any thread; what
            # it left ``sent`` is settled by the replica now holding the slot.
            self.aborted = str(exc)
            log.warning("migrate.lease_lost", thread_id=out.thread_id)
            self._thread_meta.pop(out.thread_id, None)
            return
        except (ThreadsyncError, MappingError) as exc:
            out.error = str(exc)
            log.warning("migrate.thread_failed", thread_id=out.thread_id, error=out.error)
        self._thread_meta.pop(out.thread_id, None)
        if self.client is not None and not final:
            await self._write(ledger.finish, self.target, out.thread_id, out.error)

    # -- one thread --------------------------------------------------------------------------

    async def _write(self, change: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A ledger change, committed (with whatever other threads have waiting) on return.

        Under the ``guard``: in a transaction of its own that checks the lease first (refused:
        nothing written, WriteRefused raised). Not in the shared group: the check locks the
        job's ``job_slot`` row until commit, and a sync page sharing that transaction would then
        lock its thread's row, the opposite order to the lease renewal's (thread rows, then job
        rows): a deadlock. Replicas mode is PostgreSQL only, where a commit costs little.
        """
        guard = self.guard
        if guard is None:
            return await self.mirror.write_grouped(lambda s: change(s, *args, **kwargs))

        def guarded() -> T:
            with self.mirror.write() as session:
                guard(session)
                return change(session, *args, **kwargs)

        return await self.mirror.run_write(guarded)

    async def _fence(self) -> None:
        """Right before a create, append or metadata write: the lease still holds (its own
        transaction, on the database clock; raises WriteRefused otherwise)."""
        if self.guard is not None:
            await self.mirror.run_write(_check, self.mirror, self.guard)

    async def _plan(self, thread_id: str) -> Plan:
        return await self.mirror.run(ledger.load_plan, self.mirror, self.target, thread_id)

    async def _migrate(self, out: ThreadOutcome, client: ConversationsClient) -> bool:
        """Settle, plan, send; True when the ledger already says the thread is migrated."""
        plan = await self._plan(out.thread_id)
        for batch in plan.batches:
            if batch.state == "sent":
                out.lost_creates += await self._settle(client, plan.row, batch)
                out.settled += 1
                plan = await self._plan(out.thread_id)
        existed = plan.row.conversation_id is not None
        groups = [plan.unsent[i : i + MAX_BATCH] for i in range(0, len(plan.unsent), MAX_BATCH)]
        if not existed and (not groups or not self.creates_with_items):
            # An empty thread still becomes its (empty) conversation; where a lost create cannot
            # be found again, every thread's create is empty and its messages all appended.
            groups = [[], *groups]
        out.conversation_id = plan.row.conversation_id
        if not groups:
            return plan.row.state == "migrated" and plan.row.last_error is None
        if self.source is not None:
            await self._fetch_thread_metadata(out)
        first_seq = max((b.seq for b in plan.batches), default=-1) + 1
        row, batches = await self._write(ledger.plan_batches, plan.row, groups, first_seq)
        # A thread of a few batches is read in one go; a long one batch by batch (flat memory).
        read: dict[str, bytes] | None = None
        if len(plan.unsent) <= PREFETCH:
            raws = await self.mirror.run(ledger.raws, self.mirror, plan.unsent)
            read = dict(zip(plan.unsent, raws, strict=True))
        for i, (batch, group) in enumerate(zip(batches, groups, strict=True)):
            following = batches[i + 1].id if i + 1 < len(batches) else None
            row = await self._send(client, plan, row, batch, group, out, following, read)
        out.conversation_id = row.conversation_id
        if existed and row.conversation_id:
            # The provenance counts and times moved on; setting a map is safe to repeat.
            metadata = self._metadata(plan, row)
            await self._fence()
            await client.set_metadata(row.conversation_id, metadata)
        return True

    async def _map(
        self, message_ids: Sequence[str], read: dict[str, bytes] | None = None
    ) -> list[Mapped]:
        """The items of ``message_ids``, from ``read`` when it holds them all, else one read."""
        if read is not None and all(m in read for m in message_ids):
            raws = [read.pop(m) for m in message_ids]
        else:
            raws = await self.mirror.run(ledger.raws, self.mirror, message_ids)
        return [map_message(orjson.loads(raw), self.policy) for raw in raws]

    async def _fetch_thread_metadata(self, out: ThreadOutcome) -> None:
        assert self.source is not None
        try:
            thread = await self.source.get_thread(out.thread_id)
        except ThreadsyncError as exc:
            log.info("migrate.thread_metadata_unavailable", thread_id=out.thread_id, error=str(exc))
            return
        metadata = thread.get("metadata")
        if isinstance(metadata, dict) and metadata:
            self._thread_meta[out.thread_id] = metadata
            source = Source(out.thread_id, "", 0, None, None, 0, "", metadata)
            for reason in conversation_metadata(source)[1]:
                key, _, why = reason.partition(": ")
                _note(out, [Change("(thread)", f"metadata.{key}", "dropped", why)], keep=True)

    def _metadata(self, plan: Plan, row: MigrateThread) -> dict[str, str]:
        source = Source(
            thread_id=row.thread_id,
            profile=self.source_profile,
            messages=len(plan.live),
            first_at=plan.live[0][1] if plan.live else None,
            last_at=plan.live[-1][1] if plan.live else None,
            migrated_at=int(
                row.migrated_at.timestamp() if row.migrated_at is not None else self.clock()
            ),
            migration_id=row.migration_id,
            thread_metadata=self._thread_meta.get(row.thread_id),
        )
        metadata, _ = conversation_metadata(source)
        return metadata

    async def _send(
        self,
        client: ConversationsClient,
        plan: Plan,
        row: MigrateThread,
        batch: MigrateBatch,
        group: Sequence[str],
        out: ThreadOutcome,
        following: int | None,
        read: dict[str, bytes] | None = None,
    ) -> MigrateThread:
        """POST one batch (already ``sent`` in the ledger) and confirm it with the next one's
        ``sent`` in the same commit; an unknown outcome is settled, and sent again when absent."""
        mapped = await self._map(group, read)
        items = [m.item for m in mapped]
        assert batch.id is not None
        for attempt in range(1, SEND_ATTEMPTS + 1):
            if attempt > 1:
                await self._write(ledger.mark_sent, batch.id)
            await self._fence()
            out.requests += 1
            try:
                if row.conversation_id is None:
                    created = await client.create_conversation(items, self._metadata(plan, row))
                    done = _confirmation(batch.id, mapped, None, str(created["id"]))
                else:
                    added = await client.append_items(row.conversation_id, items)
                    done = _confirmation(batch.id, mapped, _ids_in_sent_order(items, added))
            except PermanentError:
                # A refusal (400, 401, 403, 404): nothing landed; the next run tries again.
                await self._write(ledger.unsend, batch.id)
                raise
            except TransientError:
                # The outcome is unknown: settle it before anything else is sent.
                row = await self.mirror.run(_reload, self.mirror, self.target, row.thread_id)
                out.lost_creates += await self._settle(client, row, batch)
                out.settled += 1
                state, row = await self.mirror.run(
                    _batch_state, self.mirror, self.target, row.thread_id, batch.id
                )
                if state == "confirmed":
                    if following is not None:
                        await self._write(ledger.mark_sent, following)
                    else:
                        await self._write(ledger.finish, self.target, row.thread_id, None)
                    break
                if attempt == SEND_ATTEMPTS:
                    raise
                continue
            row = await self._write(
                ledger.confirm,
                self.target,
                row.thread_id,
                done,
                send_next=following,
                final=following is None,
            )
            break
        out.items += len(items)
        _note(out, [c for m in mapped for c in m.changes], keep=False)
        return row

    # -- settling a batch whose outcome is unknown --------------------------------------------

    async def _settle(
        self, client: ConversationsClient, row: MigrateThread, batch: MigrateBatch
    ) -> bool:
        """Confirm the batch or plan it again; True when it was a create that cannot be found
        (recorded as lost: an empty conversation may exist that nothing references)."""
        assert batch.id is not None
        mapped = await self._map(ledger.ids_of(batch))
        if row.conversation_id is None:
            return await self._settle_create(client, row, batch.id, mapped)
        newer = await self._items_after_anchor(client, row, len(mapped))
        if not newer:
            log.info("migrate.settled", thread_id=row.thread_id, seq=batch.seq, landed=False)
            await self._write(ledger.unsend, batch.id)
            return False
        if not same_items([m.item for m in mapped], newer):
            raise ConflictError(
                f"conversation {row.conversation_id} holds {len(newer)} item(s) after the last"
                f" confirmed one that are not batch {batch.seq} of thread {row.thread_id}:"
                " something else wrote to it; nothing more is sent (see `migrate verify`)"
            )
        log.info("migrate.settled", thread_id=row.thread_id, seq=batch.seq, landed=True)
        done = _confirmation(batch.id, mapped, [str(i["id"]) for i in newer])
        await self._write(ledger.confirm, self.target, row.thread_id, done)
        return False

    async def _items_after_anchor(
        self, client: ConversationsClient, row: MigrateThread, size: int
    ) -> list[dict[str, Any]]:
        """The conversation's items newer than the last confirmed one, oldest first."""
        assert row.conversation_id is not None
        if row.last_item_id is not None or row.items == 0:
            page = await client.list_items(row.conversation_id, limit=min(100, size + 1))
            ids = [str(i.get("id")) for i in page.data]
            if row.items == 0 and not page.has_more:
                return page.data[::-1]
            if row.last_item_id in ids:
                return page.data[: ids.index(str(row.last_item_id))][::-1]
            raise ConflictError(
                f"conversation {row.conversation_id}: the last confirmed item"
                f" {row.last_item_id} is not among the newest {size + 1}: more items than the"
                " unsettled batch were added, or it was deleted; nothing more is sent"
            )
        # The create's item ids were never named: count from the oldest instead.
        every = await all_items(client, row.conversation_id)
        if len(every) < row.items:
            raise ConflictError(
                f"conversation {row.conversation_id} holds {len(every)} items, fewer than the"
                f" {row.items} confirmed: items were deleted; nothing more is sent"
            )
        return every[row.items :]

    async def _settle_create(
        self, client: ConversationsClient, row: MigrateThread, batch_id: int, mapped: list[Mapped]
    ) -> bool:
        if not client.lists_conversations:
            # Nothing finds it (no list endpoint, no idempotency key; its id was in the lost
            # answer): recorded, and created again. The create was empty: the orphan holds no
            # history.
            log.warning("migrate.create_lost", thread_id=row.thread_id, items=len(mapped))
            await self._write(ledger.lost_create, self.target, row.thread_id, batch_id)
            return True
        found = await find_conversation(client, row.migration_id)
        if found is None:
            await self._write(ledger.unsend, batch_id)
            return False
        done = _confirmation(batch_id, mapped, None, found)
        await self._write(ledger.confirm, self.target, row.thread_id, done)
        return False

    # -- dry run -----------------------------------------------------------------------------

    async def _dry(self, out: ThreadOutcome) -> None:
        plan = await self.mirror.run(ledger.load_plan, self.mirror, self.target, out.thread_id)
        out.conversation_id = plan.row.conversation_id
        unsent = plan.unsent
        for start in range(0, len(unsent), MAX_BATCH):
            mapped = await self._map(unsent[start : start + MAX_BATCH])
            out.items += len(mapped)
            _note(out, [c for m in mapped for c in m.changes], keep=True)
        batches = -(-len(unsent) // MAX_BATCH)
        if out.conversation_id is not None:
            out.requests = batches
        elif self.creates_with_items:
            out.requests = max(batches, 1)
        else:
            out.requests = batches + 1  # the empty create
        out.settled = sum(b.state == "sent" for b in plan.batches)


def _note(out: ThreadOutcome, changes: list[Change], *, keep: bool) -> None:
    out.dropped += sum(c.action == "dropped" for c in changes)
    out.replaced += sum(c.action == "replaced" for c in changes)
    if keep:
        out.changes += changes


def _confirmation(
    batch_id: int, mapped: list[Mapped], item_ids: list[str] | None, conversation: str | None = None
) -> Confirmation:
    changes = [c for m in mapped for c in m.changes]
    return Confirmation(
        batch_id=batch_id,
        item_ids=item_ids,
        items=len(mapped),
        dropped=sum(c.action == "dropped" for c in changes),
        replaced=sum(c.action == "replaced" for c in changes),
        conversation_id=conversation,
    )


def _check(mirror: Mirror, guard: Guard) -> None:
    with mirror.write(small=True) as session:
        guard(session)


def _reload(mirror: Mirror, target: str, thread_id: str) -> MigrateThread:
    with mirror.read() as session:
        return session.get_one(MigrateThread, (target, thread_id))


def _ids_in_sent_order(sent: list[dict[str, Any]], added: list[dict[str, Any]]) -> list[str] | None:
    """The appended items' ids, oldest first, or None when the answer does not say.

    The spec does not say in which order an append answers its items; the settling anchor must
    be the newest. As sent, or reversed, is recognised by content; when both read the same (a
    batch of identical messages) or neither does, the ids are left unknown and a later settle
    counts items instead of trusting an id.
    """
    ids = [str(i.get("id")) for i in added]
    if len(ids) <= 1:
        return ids
    forward, backward = same_items(sent, added), same_items(sent, added[::-1])
    if forward and not backward:
        return ids
    if backward and not forward:
        return ids[::-1]
    return None


def _batch_state(
    mirror: Mirror, target: str, thread_id: str, batch_id: int
) -> tuple[str, MigrateThread]:
    with mirror.read() as session:
        batch = session.get_one(MigrateBatch, batch_id)
        return batch.state, session.get_one(MigrateThread, (target, thread_id))


async def all_items(client: ConversationsClient, conversation_id: str) -> list[dict[str, Any]]:
    """Every item of a conversation, oldest first."""
    out: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page = await client.list_items(conversation_id, order="asc", after=after)
        out += page.data
        if not page.has_more or not page.last_id or page.last_id == after:
            return out
        after = page.last_id


async def find_conversation(client: ConversationsClient, migration_id: str) -> str | None:
    """The conversation whose metadata names ``migration_id`` (Foundry lists conversations)."""
    after: str | None = None
    for _ in range(SCAN_PAGES):
        page = await client.list_conversations(after=after)
        for conversation in page.data:
            metadata = conversation.get("metadata") or {}
            if isinstance(metadata, dict) and metadata.get("migration_id") == migration_id:
                return str(conversation["id"])
        if not page.has_more or not page.last_id:
            return None
        after = page.last_id
    return None
