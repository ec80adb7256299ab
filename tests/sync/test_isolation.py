"""One thread's unexpected failure is that thread's recorded failure, never the run's."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError

from worker.emulator import Emulator, ManualClock
from worker.store import sync_state
from worker.store.db import Mirror
from worker.store.repo import add_threads, thread_statuses
from worker.sync import outcome
from worker.sync.runner import sync_threads
from worker.testing import emulated_client


@pytest.mark.anyio
async def test_unexpected_error_fails_only_its_thread_and_status_shows_it(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page write of one thread raises something no walk expects (a bug, a refusal of the
    database): the other threads finish their passes, the run reports that thread failed with
    the kind of error (never its text, which may quote message content), and `status` shows it;
    the next pass, without the fault, completes it."""
    emulator = Emulator(clock=ManualClock(), seed=4)
    ids = emulator.seed(seed=4, threads=4, messages=60)
    bad = ids[1]
    with mirror.write() as session:
        add_threads(session, ids)
    advance = sync_state.advance

    def failing(session: Any, thread_id: str, moved: dict[str, Any]) -> None:
        if thread_id == bad:
            raise RuntimeError("message content that must not be shown")
        advance(session, thread_id, moved)

    monkeypatch.setattr(sync_state, "advance", failing)
    async with emulated_client(emulator) as client:
        report = await sync_threads(client, mirror, page_limit=20)
    assert [o.thread_id for o in report.failed] == [bad]
    (failed,) = report.failed
    assert failed.error is not None
    assert "RuntimeError" in failed.error
    assert "content" not in failed.error
    with mirror.read() as session:
        statuses = {s.thread_id: s for s in thread_statuses(session)}
    assert statuses[bad].last_error == failed.error
    for thread_id in ids:
        if thread_id != bad:
            assert statuses[thread_id].messages == 60
            assert statuses[thread_id].last_error is None
    monkeypatch.setattr(sync_state, "advance", advance)
    async with emulated_client(emulator) as client:
        again = await sync_threads(client, mirror, page_limit=20)
    assert again.ok, again.failed
    with mirror.read() as session:
        healed = {s.thread_id: s for s in thread_statuses(session)}[bad]
    assert (healed.messages, healed.last_error) == (60, None)


def test_unexpected_names_the_kind_never_the_text() -> None:
    """A database error's text quotes its statement's parameters (message content): the line
    names the driver's error kind only, also out of a task group's single-error group."""

    class UntranslatableCharacter(Exception):
        pass

    refused = DBAPIError("INSERT ...", {"raw": "secret text"}, UntranslatableCharacter("secret"))
    for exc in (refused, ExceptionGroup("walk", [refused])):
        line = outcome.unexpected(exc)
        assert "UntranslatableCharacter" in line
        assert "secret" not in line
    assert "KeyError" in outcome.unexpected(KeyError("secret"))
    assert "secret" not in outcome.unexpected(KeyError("secret"))
