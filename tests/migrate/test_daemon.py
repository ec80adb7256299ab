"""The daemon keeps conversations in step until cut-over (``daemon.migrate_interval``)."""

from __future__ import annotations

from typing import cast

import pytest
from pydantic import SecretStr

from worker.client import ApiClient
from worker.config import DaemonSettings, Settings
from worker.daemon.lifecycle import Daemon
from worker.daemon.metrics import DaemonMetrics
from worker.emulator import serve_in_thread
from worker.migrate.settings import MigrateSettings, TargetSettings
from worker.store.db import Mirror

from .conftest import KEY, expected_items, items_in, new_emulator, sync_source


def settings_for(mirror: Mirror, url: str, interval: float | None) -> Settings:
    target = TargetSettings(profile="openai", endpoint=url, api_key=SecretStr(KEY))
    return Settings(
        database_url=mirror.safe_url,
        daemon=DaemonSettings(migrate_interval=interval),
        migrate=MigrateSettings(target=target, requests_per_second=1000),
    )


def test_the_migrate_job_is_scheduled_only_when_asked(mirror: Mirror) -> None:
    off = Daemon(settings_for(mirror, "http://127.0.0.1:1", None), mirror,
                 cast(ApiClient, None), metrics=DaemonMetrics())  # fmt: skip
    assert "migrate" not in {s.name for s in off.job_specs()}
    on = Daemon(settings_for(mirror, "http://127.0.0.1:1", 120.0), mirror,
                cast(ApiClient, None), metrics=DaemonMetrics())  # fmt: skip
    specs = {s.name: s.when for s in on.job_specs()}
    assert getattr(specs["migrate"], "seconds", None) == 120.0


@pytest.mark.anyio
async def test_each_migrate_job_appends_what_was_mirrored_since(mirror: Mirror) -> None:
    source = new_emulator(seed=1)
    [thread_id] = source.seed(seed=3, threads=1, messages=25)
    await sync_source(source, mirror, [thread_id])
    target = new_emulator()
    with serve_in_thread(target) as url:
        daemon = Daemon(settings_for(mirror, url, 60.0), mirror, cast(ApiClient, None),
                        metrics=DaemonMetrics())  # fmt: skip
        await daemon.jobs.migrate()
        source.append_messages(thread_id, n=4)
        await sync_source(source, mirror, [thread_id])
        await daemon.jobs.migrate()
    [conversation] = target.conversations.by_id  # one thread, one conversation, ever
    expected = expected_items(mirror, thread_id)
    assert len(expected) == 29
    assert items_in(target, conversation) == expected
