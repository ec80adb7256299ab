"""Fixtures for the outbox tests: an emulator with seeded threads, mirrored into ``mirror``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from worker.emulator import Emulator, ManualClock
from worker.store.db import Mirror
from worker.store.repo import add_threads
from worker.sync.runner import sync_threads
from worker.testing import emulated_client


@dataclass
class World:
    """An emulator and a mirror that has synced its threads once."""

    emulator: Emulator
    mirror: Mirror
    thread_ids: list[str]

    def messages(self, thread_id: str) -> list[dict[str, Any]]:
        return list(self.emulator.truth()["threads"][thread_id])

    def remote_metadata(self, thread_id: str, message_id: str) -> dict[str, str]:
        return dict(self.emulator.message(thread_id, message_id).data["metadata"])

    def applied_modifies(self) -> list[dict[str, Any]]:
        return [c for c in self.emulator.stats()["modify_calls"] if c["applied"]]


async def make_world(mirror: Mirror, *, threads: int = 2, messages: int = 5) -> World:
    emulator = Emulator(clock=ManualClock(), seed=11)
    ids = emulator.seed(seed=5, threads=threads, messages=messages)
    with mirror.write() as session:
        add_threads(session, ids)
    async with emulated_client(emulator) as client:
        report = await sync_threads(client, mirror)
    assert report.ok, report.failed
    emulator.reset_stats()
    return World(emulator, mirror, ids)


@pytest.fixture
async def world(mirror: Mirror) -> World:
    return await make_world(mirror)
