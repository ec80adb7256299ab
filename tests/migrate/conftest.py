"""A source mirror synced from one emulator, and a Conversations target on another."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import orjson
from pydantic import SecretStr

from worker.emulator import Emulator, ManualClock
from worker.migrate import ledger
from worker.migrate.mapping import Policy, canonical, map_message
from worker.migrate.run import MigrateReport, Migration
from worker.migrate.settings import TargetProfile, TargetSettings
from worker.migrate.target import ConversationsClient, lists_conversations, target_key
from worker.store.db import Mirror
from worker.store.repo import add_threads
from worker.sync.runner import sync_threads
from worker.testing import EmulatorTransport, SleepRecorder, emulated_client

KEY = "target-key"


def target_settings(profile: TargetProfile) -> TargetSettings:
    return TargetSettings(
        profile=profile,
        endpoint="http://127.0.0.1:1",
        project="proj" if profile == "foundry" else None,
        api_key=SecretStr(KEY),
    )


async def sync_source(source: Emulator, mirror: Mirror, thread_ids: Sequence[str]) -> None:
    with mirror.write() as session:
        add_threads(session, thread_ids)
    async with emulated_client(source) as client:
        report = await sync_threads(client, mirror)
    assert report.ok


@asynccontextmanager
async def target_client(target: Emulator, profile: TargetProfile) -> AsyncIterator[Any]:
    async with ConversationsClient(
        target_settings(profile), transport=EmulatorTransport(target), sleep=SleepRecorder()
    ) as client:
        yield client


async def migrate(
    mirror: Mirror,
    target: Emulator,
    profile: TargetProfile = "openai",
    *,
    thread_ids: Sequence[str] | None = None,
    policy: Policy | None = None,
    dry_run: bool = False,
    source: Emulator | None = None,
) -> MigrateReport:
    key = target_key(target_settings(profile))
    async with target_client(target, profile) as client, AsyncExitStack() as stack:
        reader = None
        if source is not None:
            reader = await stack.enter_async_context(emulated_client(source))
        migration = Migration(
            mirror,
            key,
            None if dry_run else client,
            policy or Policy(),
            concurrency=4,
            source=reader,
            lists_conversations=lists_conversations(profile),
        )
        return await migration.run(thread_ids, None)


def expected_items(mirror: Mirror, thread_id: str, policy: Policy | None = None) -> list[Any]:
    plan = ledger.load_plan(mirror, "x", thread_id)
    raws = ledger.raws(mirror, [m for m, _ in plan.live])
    return [canonical(map_message(orjson.loads(r), policy or Policy()).item) for r in raws]


def conversation_of(mirror: Mirror, profile: TargetProfile, thread_id: str) -> str:
    rows = {r.thread_id: r for r in ledger.rows(mirror, target_key(target_settings(profile)))}
    conversation = rows[thread_id].conversation_id
    assert conversation is not None
    return conversation


def items_in(target: Emulator, conversation_id: str) -> list[Any]:
    return [canonical(i) for i in target.conversations.get(conversation_id).items]


def conversations_for(target: Emulator, thread_id: str) -> list[str]:
    return [
        c.id
        for c in target.conversations.by_id.values()
        if c.metadata.get("source_thread_id") == thread_id
    ]


def new_emulator(seed: int = 0) -> Emulator:
    return Emulator(api_key=KEY, clock=ManualClock(1_777_636_800.0), seed=seed)
