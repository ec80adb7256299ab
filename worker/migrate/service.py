"""One ``migrate`` pass from the settings: what the CLI and the daemon's migrate job both run."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AsyncExitStack

from worker.client.api import ApiClient
from worker.client.pacer import Pacer
from worker.config import Settings
from worker.errors import ConfigError
from worker.migrate.mapping import Policy
from worker.migrate.run import Guard, MigrateReport, Migration
from worker.migrate.target import ConversationsClient, lists_conversations, target_key
from worker.store.db import Mirror


def policy_of(settings: Settings) -> Policy:
    m = settings.migrate
    return Policy(annotations=m.annotations, attachments=m.attachments, timestamps=m.timestamps)


def client_of(settings: Settings) -> ConversationsClient:
    """The target's client, paced at ``migrate.requests_per_second`` with the shared retry
    policy (its own pacer: the target is another service with its own limits)."""
    m = settings.migrate
    return ConversationsClient(m.target, settings.retry, pacer=Pacer(m.requests_per_second))


async def run_migration(
    settings: Settings,
    mirror: Mirror,
    *,
    thread_ids: Sequence[str] | None = None,
    since: int | None = None,
    dry_run: bool = False,
    guard: Guard | None = None,
) -> MigrateReport:
    """``guard``: the daemon's migrate job lease in replicas mode (``Migration.guard``)."""
    key = target_key(settings.migrate.target)

    def migration(client: ConversationsClient | None, source: ApiClient | None) -> Migration:
        return Migration(
            mirror,
            key,
            client,
            policy_of(settings),
            source_profile=settings.api.profile.value,
            concurrency=settings.migrate.concurrency,
            source=source,
            lists_conversations=lists_conversations(settings.migrate.target.profile),
            guard=guard,
        )

    if dry_run:
        return await migration(None, None).run(thread_ids, since)
    async with client_of(settings) as client, AsyncExitStack() as stack:
        source = _source_client(settings)
        if source is not None:
            await stack.enter_async_context(source)
        return await migration(client, source).run(thread_ids, since)


def _source_client(settings: Settings) -> ApiClient | None:
    """The source API, for each thread's own metadata; None when it is not configured (a mirror
    migrated after the sunset, or from an import, needs no source)."""
    try:
        return ApiClient(settings.api, settings.retry)
    except ConfigError:
        return None
