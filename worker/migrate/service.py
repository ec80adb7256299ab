"""One ``migrate`` pass from the settings: what the CLI and the daemon's migrate job both run."""

from __future__ import annotations

from collections.abc import Sequence

from worker.client.pacer import Pacer
from worker.config import Settings
from worker.migrate.mapping import Policy
from worker.migrate.run import MigrateReport, Migration
from worker.migrate.target import ConversationsClient, target_key
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
) -> MigrateReport:
    key = target_key(settings.migrate.target)

    def migration(client: ConversationsClient | None) -> Migration:
        return Migration(
            mirror,
            key,
            client,
            policy_of(settings),
            source_profile=settings.api.profile.value,
            concurrency=settings.migrate.concurrency,
        )

    if dry_run:
        return await migration(None).run(thread_ids, since)
    async with client_of(settings) as client:
        return await migration(client).run(thread_ids, since)
