"""Thread discovery on Foundry classic: complete, loop-proof, never undoing a removal."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
from typer.testing import CliRunner, Result

from worker.cli.app import app
from worker.client import MessagePage
from worker.client.api import Order
from worker.config import Profile
from worker.discover import discover, list_threads
from worker.emulator import Emulator, ManualClock, serve_in_thread
from worker.errors import PagingError
from worker.store.db import Mirror
from worker.store.repo import pause_many, thread_statuses, track_many
from worker.testing import emulated_client

KEY = "discover-key"


def _statuses(mirror: Mirror) -> dict[str, str]:
    with mirror.read() as session:
        return {s.thread_id: s.state for s in thread_statuses(session)}


def _project(threads: int, *, clock: ManualClock | None = None) -> tuple[Emulator, list[str]]:
    """An emulator holding ``threads`` threads created one second apart, oldest first."""
    clock = clock or ManualClock(1_700_000_000.0)
    emulator = Emulator(api_key=KEY, clock=clock)
    ids = []
    for _ in range(threads):
        ids.append(emulator.create_thread()["id"])
        clock.advance(1)
    return emulator, ids


@pytest.mark.anyio
async def test_discover_pages_to_the_end_and_tracks_only_the_new(mirror: Mirror) -> None:
    """250 threads are three pages of 100; tracked ones (paused included) are left alone."""
    emulator, ids = _project(250)
    with mirror.write() as session:
        track_many(session, [ids[0], ids[1]])
        track_many(session, ["thread_notlisted"])
    with mirror.write() as session:
        pause_many(session, [ids[1]])
    async with emulated_client(emulator, profile=Profile.FOUNDRY) as client:
        found = await discover(client, mirror)
    assert found.found == 250
    assert found.new == ids[2:]
    assert found.already == 2
    stats = emulator.stats()["routes"]["GET /api/projects/{project}/threads"]
    assert stats == {"200": 3}
    states = _statuses(mirror)
    assert list(states)[3:] == ids[2:]  # tracked in the listing's (creation) order
    assert states[ids[1]] == "paused"
    assert all(states[t] == "active" for t in ids[2:])
    async with emulated_client(emulator, profile=Profile.FOUNDRY) as client:
        again = await discover(client, mirror)
    assert (again.found, again.new, again.already) == (250, [], 250)


@pytest.mark.anyio
async def test_dry_run_changes_nothing(mirror: Mirror) -> None:
    emulator, ids = _project(5)
    with mirror.write() as session:
        track_many(session, ids[:2])
    async with emulated_client(emulator, profile=Profile.FOUNDRY) as client:
        found = await discover(client, mirror, dry_run=True)
    assert found.new == ids[2:]
    assert list(_statuses(mirror)) == ids[:2]


@pytest.mark.anyio
async def test_since_walks_newest_first_and_stops_at_older_threads() -> None:
    """--since needs only the pages down to the first older thread: one request here."""
    emulator, ids = _project(250)
    since = 1_700_000_000 + 240  # the last ten threads
    async with emulated_client(emulator, profile=Profile.FOUNDRY) as client:
        listing = await list_threads(client, since=since)
    assert listing.ids == ids[240:][::-1]
    assert listing.newest == 1_700_000_000 + 249
    assert emulator.stats()["routes"]["GET /api/projects/{project}/threads"] == {"200": 1}


@pytest.mark.anyio
@pytest.mark.parametrize("cursor_missing", ["404", "400", "empty", "ignore", "keep_place"])
async def test_a_thread_deleted_under_the_cursor_still_lists_every_thread(
    cursor_missing: str,
) -> None:
    """The thread a cursor names is deleted between pages: under every plausible server answer
    (404, 400, an empty page, the cursor ignored, its place kept) the walk steps back a thread
    and lists every live thread, each once."""
    emulator, ids = _project(150)
    emulator.set_behaviour(cursor_missing=cursor_missing)
    async with emulated_client(emulator, profile=Profile.FOUNDRY) as client:
        original = client.list_threads
        calls = 0

        async def deleting(**kwargs: Any) -> MessagePage:
            nonlocal calls
            calls += 1
            page = await original(**kwargs)
            if calls == 1:
                emulator.delete_thread(ids[99])  # the cursor of the next request
            return page

        client.list_threads = deleting  # type: ignore[method-assign]
        listing = await list_threads(client)
    assert listing.ids == ids  # the deleted one was listed before it went


@dataclass
class LoopingLister:
    """A server that ignores the cursor (the same page again) or sends cursors round."""

    pages: list[list[str]]
    calls: list[str | None] = field(default_factory=list)

    async def list_threads(
        self, *, limit: int = 100, order: Order = "desc", after: str | None = None
    ) -> MessagePage:
        self.calls.append(after)
        ids = self.pages[min(len(self.calls) - 1, len(self.pages) - 1)]
        return MessagePage(
            data=[{"id": i, "created_at": 1} for i in ids],
            first_id=ids[0],
            last_id=ids[-1],
            has_more=True,
        )


@pytest.mark.anyio
async def test_a_server_repeating_a_page_is_refused() -> None:
    lister = LoopingLister([["thread_a", "thread_b"]])
    with pytest.raises(PagingError, match="the pages loop"):
        await list_threads(lister)
    assert lister.calls == [None, "thread_b", "thread_a"]  # one step back, then refused


@pytest.mark.anyio
async def test_a_repeated_page_with_nothing_to_step_back_to_is_refused() -> None:
    lister = LoopingLister([["thread_a"]])
    with pytest.raises(PagingError, match="only threads already listed"):
        await list_threads(lister)
    assert lister.calls == [None, "thread_a"]


@pytest.mark.anyio
async def test_cursors_coming_round_are_refused() -> None:
    pages = [["thread_a", "thread_b"], ["thread_c", "thread_d"], ["thread_e", "thread_b"]]
    lister = LoopingLister(pages)
    with pytest.raises(PagingError, match="came round again"):
        await list_threads(lister)
    assert lister.calls == [None, "thread_b", "thread_d"]


# -- the command ----------------------------------------------------------------------------------


def _cli(env: dict[str, str], *args: str) -> Result:
    try:
        return CliRunner().invoke(app, list(args), env=env)
    finally:
        structlog.reset_defaults()


def _env(url: str, db: Path, profile: str) -> dict[str, str]:
    return {
        "THREADSYNC_API__PROFILE": profile,
        "THREADSYNC_API__ENDPOINT": url,
        "THREADSYNC_API__PROJECT": "proj",
        "THREADSYNC_API__API_KEY": KEY,
        "THREADSYNC_DATABASE_URL": f"sqlite:///{db}",
        "AZURE_OPENAI_ENDPOINT": "",
        "AZURE_OPENAI_API_KEY": "",
        "OPENAI_API_VERSION": "",
    }


@pytest.mark.parametrize("profile", ["azure", "openai"])
def test_discover_on_a_service_that_cannot_list_exits_2_and_says_how_to_import(
    tmp_path: Path, profile: str
) -> None:
    db = tmp_path / "m.db"
    result = _cli(_env("https://example.invalid", db, profile), "threads", "discover")
    assert result.exit_code == 2
    assert "cannot list threads" in result.stderr
    assert "threads add --from-file" in result.stderr
    assert not db.exists()


def test_discover_command_dry_run_then_for_real(tmp_path: Path) -> None:
    emulator, ids = _project(3)
    db = tmp_path / "m.db"
    with serve_in_thread(emulator) as url:
        env = _env(url, db, "foundry")
        dry = _cli(env, "threads", "discover", "--dry-run")
        assert dry.exit_code == 0, dry.output
        assert dry.stdout.splitlines() == ids
        assert "found 3 threads: 3 new" in dry.stderr
        assert not db.exists()  # a dry run creates no mirror
        real = _cli(env, "threads", "discover")
        assert real.exit_code == 0, real.output
        assert real.stdout.strip() == "found 3 threads: 3 new, now tracked; 0 already tracked"
        since = _cli(env, "threads", "discover", "--dry-run", "--since", "2023-11-14T22:13:21Z")
        assert since.exit_code == 0, since.output
        assert since.stdout == ""
        assert "found 2 threads: 0 new" in since.stderr
        bad = _cli(env, "threads", "discover", "--since", "last week")
        assert bad.exit_code == 2
        assert "--since 'last week'" in bad.stderr
