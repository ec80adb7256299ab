"""Thread discovery: Foundry classic lists a project's threads (``GET /threads``); track the new.

Foundry classic is the only service with that listing (API.md section 2.2, SUCCESSOR.md section
4): on the azure and openai profiles discovery is a configuration error that says how to import
ids instead. The listing has no filter, so ``since`` walks newest first and stops at the first
thread created before it (``created_at`` is set by the server when a thread is made, so no
thread can appear later with an older one); without it the walk is oldest first, to the end.

Discovery never re-activates a thread the user paused (`threads remove`): it only adds threads
the mirror has never tracked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session

from worker.client.api import Order
from worker.client.pager import ThreadLister, iter_thread_pages
from worker.config import Profile, Settings
from worker.errors import ConfigError
from worker.ids import MAX_LENGTH
from worker.logs import get_logger
from worker.store.db import Mirror
from worker.store.repo import track_many, tracking_states

log = get_logger()

IMPORT_HINT = (
    "keep the ids your application stored and import them with"
    " `threadsync threads add --from-file ids.txt` (one id per line, or CSV with a thread_id"
    " column)"
)


def cannot_list(profile: Profile) -> str:
    """Why ``profile`` cannot discover threads, and what to do instead."""
    service = "Azure OpenAI Assistants" if profile is Profile.AZURE else "the OpenAI platform"
    return (
        f"the {profile.value} profile's service ({service}) cannot list threads; only Foundry"
        f" classic (profile foundry) can. {IMPORT_HINT[0].upper()}{IMPORT_HINT[1:]}"
    )


def check_can_discover(settings: Settings, what: str) -> None:
    """A :class:`ConfigError` naming ``what`` asked for discovery when the service cannot list."""
    profile = settings.api.profile
    if profile is not Profile.FOUNDRY:
        raise ConfigError(f"{what}: {cannot_list(profile)}")


@dataclass
class Listing:
    """The project's threads as listed: distinct ids in listing order, the newest creation time."""

    ids: list[str] = field(default_factory=list)
    newest: int | None = None
    refused: list[str] = field(default_factory=list)  # ids the mirror cannot hold


@dataclass
class Discovery:
    """What a discovery found and did."""

    found: int
    new: list[str]
    already: int
    newest: int | None
    refused: list[str]


async def list_threads(client: ThreadLister, *, since: int | None = None) -> Listing:
    """Every thread the project lists (created at or after ``since``, unix seconds, if given)."""
    out = Listing()
    seen: set[str] = set()
    order: Order = "asc" if since is None else "desc"
    async with aclosing(iter_thread_pages(client, order=order)) as pages:
        async for page in pages:
            if not _take_page(out, seen, page.data, since):
                break
    return out


def _take_page(out: Listing, seen: set[str], data: Sequence[Any], since: int | None) -> bool:
    """Add a page's threads; False once a thread older than ``since`` shows the walk is done."""
    for thread in data:
        created = thread.get("created_at")
        created = created if isinstance(created, int) and not isinstance(created, bool) else None
        if since is not None and created is not None and created < since:
            return False
        thread_id: str = thread["id"]
        if thread_id in seen:
            continue  # a page overlapping the one before (a tie at the page's edge)
        seen.add(thread_id)
        if not thread_id or len(thread_id) > MAX_LENGTH:
            out.refused.append(thread_id[:40])
            continue
        out.ids.append(thread_id)
        if created is not None and (out.newest is None or created > out.newest):
            out.newest = created
    return True


def known_ids(mirror: Mirror | None, thread_ids: Sequence[str]) -> set[str]:
    """Which of ``thread_ids`` the mirror tracks in any state (blocking; None: no mirror yet)."""
    if mirror is None:
        return set()
    with mirror.read() as session:
        return set(tracking_states(session, thread_ids))


async def discover(
    client: ThreadLister,
    mirror: Mirror | None,
    *,
    since: int | None = None,
    dry_run: bool = False,
    guard: Callable[[Session], None] | None = None,
) -> Discovery:
    """List the project's threads and track the ones never tracked (``dry_run``: only say).

    ``guard``: the daemon's discover job lease in replicas mode, checked in the tracking
    transaction (it raises when lost: nothing is tracked)."""
    listing = await list_threads(client, since=since)
    if dry_run or mirror is None:
        known = await _known(mirror, listing.ids)
        new = [t for t in listing.ids if t not in known]
    else:
        new = await mirror.run_write(_track, mirror, listing.ids, guard)
    if listing.refused:
        log.warning("discover.ids_refused", count=len(listing.refused), first=listing.refused[0])
    return Discovery(
        found=len(listing.ids),
        new=new,
        already=len(listing.ids) - len(new),
        newest=listing.newest,
        refused=listing.refused,
    )


async def _known(mirror: Mirror | None, thread_ids: list[str]) -> set[str]:
    if mirror is None:
        return set()
    return await mirror.run(known_ids, mirror, thread_ids)


def _track(
    mirror: Mirror, thread_ids: list[str], guard: Callable[[Session], None] | None
) -> list[str]:
    with mirror.write() as session:
        if guard is not None:
            guard(session)
        return track_many(session, thread_ids, reactivate=False).added
