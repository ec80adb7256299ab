"""``threadsync migrate verify``: each conversation's items against the mirror.

The expected items are the thread's live messages in server order, mapped with the current
policy; the conversation is read oldest first. Role and content are compared as
:func:`~worker.migrate.mapping.canonical` shows them (what the service keeps of what was sent).
The first difference is named: a missing item, an extra one, or an item out of place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from worker.migrate import ledger
from worker.migrate.mapping import Policy, canonical, map_message
from worker.migrate.models import MigrateThread
from worker.migrate.run import all_items
from worker.migrate.target import ConversationsClient
from worker.store.db import Mirror


@dataclass(frozen=True)
class Verdict:
    thread_id: str
    conversation_id: str | None
    expected: int
    found: int
    difference: str | None  # None: identical


def first_difference(
    expected: Sequence[tuple[str, tuple[object, ...]]],
    found: Sequence[tuple[str, tuple[object, ...]]],
    message_ids: Sequence[str],
    item_ids: Sequence[str],
) -> str | None:
    """Where two canonical item lists first part, in words; None when they are equal."""
    for i, (want, got) in enumerate(zip(expected, found, strict=False)):
        if want == got:
            continue
        if want in found[i + 1 :] or got in expected[i + 1 :]:
            return (
                f"item {i} is out of order: expected message {message_ids[i]}, found item"
                f" {item_ids[i]} holding another message's content"
            )
        return (
            f"item {i} differs: expected message {message_ids[i]} ({want[0]}), found item"
            f" {item_ids[i]} ({got[0]}) with other content"
        )
    if len(found) < len(expected):
        i = len(found)
        return f"item {i} is missing: message {message_ids[i]} is not in the conversation"
    if len(found) > len(expected):
        i = len(expected)
        return f"item {i} is extra: item {item_ids[i]} matches no message of the mirror"
    return None


async def verify_thread(
    mirror: Mirror, client: ConversationsClient, row: MigrateThread, policy: Policy
) -> Verdict:
    plan = await mirror.run(ledger.load_plan, mirror, row.target, row.thread_id)
    message_ids = [m for m, _ in plan.live]
    raws = await mirror.run(ledger.raws, mirror, message_ids)
    expected = [canonical(map_message(orjson.loads(raw), policy).item) for raw in raws]
    if row.conversation_id is None:
        return Verdict(row.thread_id, None, len(expected), 0, "no conversation yet")
    items = await all_items(client, row.conversation_id)
    found = [canonical(i) for i in items]
    item_ids = [str(i.get("id")) for i in items]
    difference = first_difference(expected, found, message_ids, item_ids)
    return Verdict(row.thread_id, row.conversation_id, len(expected), len(found), difference)
