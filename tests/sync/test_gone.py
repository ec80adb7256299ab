"""Issue 16, points 1 and 2 at the run level: what a 404 means, and answers that stop a run.

Every test runs on SQLite and PostgreSQL (the ``mirror`` fixture). A mirror "fingerprint" is every
row of the tables a sync may change; a misconfigured run must leave it exactly as it was.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from worker.backup import run_backup
from worker.config import Settings
from worker.emulator import Emulator, ManualClock
from worker.errors import MisconfiguredError
from worker.store.db import Mirror
from worker.store.models import SyncState, TrackedThread, utcnow
from worker.store.repo import add_threads
from worker.sync.runner import NOT_FOUND_KIND, sync_threads
from worker.testing import emulated_client

pytestmark = pytest.mark.anyio

WRONG_PATH = {"endpoint": "http://127.0.0.1:1/openai"}  # a portal URL with its path kept


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(clock=ManualClock(), seed=16)


def track(mirror: Mirror, *ids: str) -> None:
    with mirror.write() as session:
        add_threads(session, ids)


async def sync(
    emulator: Emulator, mirror: Mirror, api: dict[str, Any] | None = None, **kw: Any
) -> Any:
    async with emulated_client(emulator, **(api or {})) as client:
        return await sync_threads(client, mirror, **kw)


def fingerprint(mirror: Mirror) -> dict[str, list[Any]]:
    """Every row of the tables that hold the mirror's state (run history aside)."""
    out = {}
    with mirror.read() as session:
        for table, key in (
            ("message", "id"),
            ("tracked_thread", "thread_id"),
            ("sync_state", "thread_id"),
            ("mirror_meta", "key"),
        ):
            rows = session.execute(text(f"SELECT * FROM {table} ORDER BY {key}"))
            out[table] = [tuple(row) for row in rows]
    return out


def states(mirror: Mirror) -> dict[str, str]:
    with mirror.read() as session:
        rows = session.execute(text("SELECT thread_id, state FROM tracked_thread"))
        return {row[0]: row[1] for row in rows}


def requests(emulator: Emulator) -> int:
    return sum(n for by in emulator.stats()["routes"].values() for n in by.values())


async def synced(emulator: Emulator, mirror: Mirror, threads: int = 3) -> list[str]:
    ids = emulator.seed(seed=1, threads=threads, messages=5)
    track(mirror, *ids)
    assert (await sync(emulator, mirror)).ok
    return ids


@pytest.mark.parametrize(
    ("behaviour", "api"),
    [
        ({"unknown_route": "resource"}, WRONG_PATH),
        ({"unknown_route": "bare"}, WRONG_PATH),
        ({"unknown_route": "invalid_url"}, WRONG_PATH),
        ({"unknown_version": "resource"}, {"api_version": "2023-01-01"}),
        ({"unknown_version": "bare"}, {"api_version": "2023-01-01"}),
        ({"unknown_version": "unsupported"}, {"api_version": "2023-01-01"}),
        ({}, {"endpoint": "http://127.0.0.1:1/v1"}),  # an OpenAI root under the azure profile
    ],
)
async def test_a_wrong_configuration_marks_nothing_and_a_fixed_one_resumes(
    emulator: Emulator, mirror: Mirror, behaviour: dict[str, str], api: dict[str, Any]
) -> None:
    ids = await synced(emulator, mirror)
    emulator.set_behaviour(**behaviour)
    before = fingerprint(mirror)
    with pytest.raises(MisconfiguredError) as caught:
        await sync(emulator, mirror, api)
    assert "nothing was marked" in str(caught.value)
    assert any(name in caught.value.setting for name in ("ENDPOINT", "API_VERSION"))
    assert fingerprint(mirror) == before
    emulator.append_messages(ids[0], n=2)
    report = await sync(emulator, mirror)  # the configuration fixed
    assert report.ok
    assert report.counts.added == 2
    assert set(states(mirror).values()) == {"active"}


async def test_every_thread_named_not_found_is_the_wrong_resource(
    emulator: Emulator, mirror: Mirror
) -> None:
    """Each 404 names its thread, but no thread answered: another resource, not three deletions."""
    ids = await synced(emulator, mirror)
    before = fingerprint(mirror)
    for thread_id in ids:
        emulator.delete_thread(thread_id)
    with pytest.raises(MisconfiguredError, match="every thread answered 404"):
        await sync(emulator, mirror)
    assert fingerprint(mirror) == before


async def test_a_named_404_is_gone_when_other_threads_answer(
    emulator: Emulator, mirror: Mirror
) -> None:
    a, b, c = await synced(emulator, mirror)
    emulator.delete_thread(a)
    report = await sync(emulator, mirror)
    assert {o.thread_id: o.result for o in report.outcomes} == {a: "gone", b: "synced", c: "synced"}
    assert not report.ok  # news: exit 1 once
    assert states(mirror)[a] == "gone"
    assert (await sync(emulator, mirror)).ok  # known gone: skipped until its re-check


async def test_one_thread_asked_is_confirmed_by_a_probe_of_another(
    emulator: Emulator, mirror: Mirror
) -> None:
    """`sync --thread A` where A was deleted: one request to another tracked thread proves the
    service answers, so A is gone; with that one gone too, nothing is marked."""
    a, b, c = await synced(emulator, mirror)
    emulator.delete_thread(a)
    report = await sync(emulator, mirror, thread_ids=[a])
    assert [o.result for o in report.outcomes] == ["gone"]
    emulator.delete_thread(b)
    emulator.delete_thread(c)
    track(mirror, a)  # reactivated by `threads add`
    assert states(mirror)[a] == "active"
    before = fingerprint(mirror)
    with pytest.raises(MisconfiguredError):
        await sync(emulator, mirror, thread_ids=[a])
    assert fingerprint(mirror) == before


@pytest.mark.parametrize("mode", ["resource", "bare"])
async def test_a_generic_404_needs_a_second_pass(
    emulator: Emulator, mirror: Mirror, mode: str
) -> None:
    """A 404 that does not name the thread, while others answer: gone only when the next pass
    answers 404 again (a thread that answers in between is never marked)."""
    a, b, _ = await synced(emulator, mirror)
    emulator.set_behaviour(unknown_thread=mode)
    emulator.delete_thread(a)
    first = await sync(emulator, mirror)
    (failed,) = first.failed
    assert failed.thread_id == a
    assert "marked gone if the next pass answers 404 again" in (failed.error or "")
    assert states(mirror)[a] == "active"
    with mirror.read() as session:
        state = session.get(SyncState, a)
        assert state is not None
        assert state.last_error_kind == NOT_FOUND_KIND
    second = await sync(emulator, mirror)
    assert [o.thread_id for o in second.gone] == [a]
    assert states(mirror)[a] == "gone"
    assert states(mirror)[b] == "active"


async def test_a_gone_thread_is_rechecked_and_resumes(emulator: Emulator, mirror: Mirror) -> None:
    """Marked gone (say, after an outage): left alone for a day, then asked again; it answers,
    so it is active again and its new messages are mirrored."""
    a, _, _ = await synced(emulator, mirror)
    now = utcnow()
    with mirror.write() as session:
        row = session.get(TrackedThread, a)
        assert row is not None
        row.state, row.gone_at = "gone", now
    emulator.append_messages(a, n=3)
    early = await sync(emulator, mirror, now=lambda: now + timedelta(hours=1))
    assert {o.thread_id: o.result for o in early.outcomes}[a] == "gone"
    assert early.ok  # already known
    later = await sync(emulator, mirror, now=lambda: now + timedelta(days=1, seconds=1))
    assert {o.thread_id: o.result for o in later.outcomes}[a] == "synced"
    assert later.counts.added == 3
    assert states(mirror)[a] == "active"


async def test_a_wrong_key_stops_the_run_within_the_concurrency(
    emulator: Emulator, mirror: Mirror
) -> None:
    ids = emulator.seed(seed=2, threads=40, messages=2)
    track(mirror, *ids)
    before = fingerprint(mirror)
    emulator.reset_stats()
    with pytest.raises(MisconfiguredError) as caught:
        await sync(emulator, mirror, {"api_key": SecretStr("sk-wrong")}, concurrency=4)
    assert caught.value.setting == "AZURE_OPENAI_API_KEY"
    assert str(caught.value).count("HTTP 401") == 1
    assert requests(emulator) <= 4  # the passes already under way, not one per thread
    assert fingerprint(mirror) == before


async def test_a_wrong_endpoint_stops_after_a_few_404s_not_one_per_thread(
    emulator: Emulator, mirror: Mirror
) -> None:
    """A generic 404 blames nothing by itself; eight of them with nothing answered, and a probe
    of another thread answering 404 too, stop the run."""
    ids = emulator.seed(seed=2, threads=60, messages=2)
    track(mirror, *ids)
    assert (await sync(emulator, mirror)).ok
    emulator.set_behaviour(unknown_route="resource")
    before = fingerprint(mirror)
    emulator.reset_stats()
    with pytest.raises(MisconfiguredError, match="threads answered 404"):
        await sync(emulator, mirror, WRONG_PATH, concurrency=4)
    # At most two requests (the probe and an early GET) per pass started: the eight that
    # triggered the probe and the three beside the last of them; then the two probes.
    assert requests(emulator) <= 2 * (8 + 3) + 2
    assert fingerprint(mirror) == before


async def test_a_backup_still_snapshots_when_every_thread_404s(
    emulator: Emulator, mirror: Mirror, tmp_path: Path
) -> None:
    """After a shutdown the API may answer 404 everywhere: nothing is marked, and the backup
    that syncs first still keeps the mirror, saying why it was not synced."""
    ids = await synced(emulator, mirror)
    for thread_id in ids:
        emulator.delete_thread(thread_id)
    before = fingerprint(mirror)
    settings = Settings(database_url=mirror.safe_url)
    async with emulated_client(emulator) as client:
        result = await run_backup(settings, mirror, client, dest=tmp_path / "b")
    assert not result.sync_ok
    assert result.sync_error is not None
    assert "every thread answered 404" in result.sync_error
    assert result.snapshot.threads == 3
    assert fingerprint(mirror) == before
