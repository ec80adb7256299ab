"""`threadsync threads add|remove|list|discover`: which threads the mirror follows.

Ids come from the command line or, in bulk, from a file or standard input (``--from-file``, see
:mod:`worker.idfile`); every one is checked against the service's id syntax (:mod:`worker.ids`)
before the mirror is opened, so a bad id never leaves a trace. ``discover`` asks Foundry classic,
the one service that lists threads (:mod:`worker.discover`).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from worker.cli.common import api_client, command, fail, globals_of, out_console, run_async
from worker.cli.export import parse_when
from worker.cli.say import notice, result
from worker.cli.tables import iso_utc, print_json_lines, print_table
from worker.discover import Discovery, check_can_discover, discover
from worker.errors import ConfigError
from worker.idfile import BadLine, IdList, read_ids
from worker.ids import id_problem
from worker.store.db import Mirror, normalise_url, sqlite_path
from worker.store.repo import Pausing, Tracking, pause_many, thread_statuses, track_many

threads_app = typer.Typer(
    rich_markup_mode=None,
    help="Choose the threads to mirror: by id, from a file, or (Foundry classic) discovered.",
)


def _from_file(command: str) -> Any:
    return typer.Option(
        "--from-file",
        "-f",
        envvar=f"THREADSYNC_THREADS__{command.upper()}_FROM_FILE",
        help="Read the ids from this file, or - for standard input: one id per line, or CSV"
        " with a header naming the column. Blank lines and # comments are skipped.",
        show_default=False,
    )


Column = Annotated[
    str | None,
    typer.Option(
        "--column",
        envvar="THREADSYNC_THREADS__COLUMN",
        help="With --from-file: the CSV column holding the ids (default thread_id).",
        show_default=False,
    ),
]
SkipInvalid = Annotated[
    bool,
    typer.Option(
        "--skip-invalid",
        envvar="THREADSYNC_THREADS__SKIP_INVALID",
        help="Go ahead with the good ids when some are malformed (each is still named).",
    ),
]
Verbose = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        envvar="THREADSYNC_THREADS__VERBOSE",
        help="With --from-file: one line per id as well as the summary.",
    ),
]
Ids = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[THREAD_ID]...", help="Thread ids, e.g. thread_abc123.", show_default=False
    ),
]


def register(app: typer.Typer) -> None:
    app.add_typer(threads_app, name="threads")


def _from_arguments(values: list[str]) -> IdList:
    """Command-line ids as an :class:`IdList` (a bad one's "line" is its position)."""
    out = IdList(source="the command line")
    seen: set[str] = set()
    for position, value in enumerate(values, start=1):
        problem = id_problem(value)
        if problem is not None:
            out.bad.append(BadLine(position, problem))
        elif value in seen:
            out.duplicates += 1
        else:
            seen.add(value)
            out.ids.append(value)
    return out


def gather_ids(
    values: list[str] | None,
    from_file: str | None,
    column: str | None,
    *,
    skip_invalid: bool,
    verb: str,
    done: str,
) -> IdList:
    """The ids to act on; every malformed one is named, and unless ``skip_invalid`` any of them
    stops the command before the mirror is touched."""
    if values and from_file is not None:
        raise ConfigError("give thread ids or --from-file, not both")
    if from_file is not None:
        ids = read_ids(from_file, column=column)
    elif values:
        ids = _from_arguments(values)
    else:
        raise ConfigError(f"nothing to {verb}: give thread ids, or --from-file PATH (- for stdin)")
    _report_bad(
        ids, skip_invalid=skip_invalid, verb=verb, done=done, from_file=from_file is not None
    )
    return ids


def _report_bad(ids: IdList, *, skip_invalid: bool, verb: str, done: str, from_file: bool) -> None:
    if not ids.bad:
        return
    if not from_file and not skip_invalid:
        # Ids typed on the command line: one line naming each bad one.
        problems = "; ".join(bad.problem for bad in ids.bad)
        raise fail(f"{problems}; nothing was {done}")
    label = "warning" if skip_invalid else "error"
    for bad in ids.bad:
        where = f"{ids.source}:{bad.line}: " if from_file else ""
        suffix = " (skipped)" if skip_invalid else ""
        notice(f"{where}{bad.problem}{suffix}", level=label)
    if not skip_invalid:
        raise fail(
            f"{len(ids.bad)} of {ids.lines_with_ids} lines in {ids.source} are not thread ids;"
            f" nothing was {done}. Fix them, or pass --skip-invalid to {verb} the rest"
        )


def _counts(ids: IdList, parts: list[tuple[int, str]]) -> str:
    shown = ", ".join(f"{n:,} {what}" for n, what in parts if n or what == parts[0][1])
    extra = []
    if ids.duplicates:
        extra.append(f"{ids.duplicates:,} duplicate{'s' if ids.duplicates != 1 else ''}")
    if ids.bad:
        extra.append(f"{len(ids.bad):,} invalid skipped")
    tail = f" ({'; '.join(extra)})" if extra else ""
    return f"{ids.source}: {len(ids.ids):,} ids: {shown}{tail}"


@threads_app.command("add")
@command
def add(
    ctx: typer.Context,
    thread_ids: Ids = None,
    from_file: Annotated[str | None, _from_file("add")] = None,
    column: Column = None,
    skip_invalid: SkipInvalid = False,
    verbose: Verbose = False,
) -> None:
    """Track threads; they are synced by the next `threadsync sync` (or the running daemon).

    Threads already tracked are counted, not errors; paused or gone ones become active again.
    """
    ids = gather_ids(
        thread_ids, from_file, column, skip_invalid=skip_invalid, verb="add", done="added"
    )
    mirror = globals_of(ctx).mirror()
    with mirror.write() as session:
        done = track_many(session, ids.ids)
    per_id = verbose or from_file is None
    if per_id:
        _print_states(
            ids.ids,
            {
                **dict.fromkeys(done.added, "added"),
                **{t: f"reactivated (was {done.was[t]})" for t in done.reactivated},
                **dict.fromkeys(done.already, "already tracked"),
            },
        )
    if from_file is not None:
        result(_add_summary(ids, done))


def _add_summary(ids: IdList, done: Tracking) -> str:
    parts = [
        (len(done.added), "added"),
        (len(done.reactivated), "re-activated"),
        (len(done.already), "already tracked"),
    ]
    return _counts(ids, parts)


def _print_states(ordered: list[str], states: dict[str, str]) -> None:
    for thread_id in ordered:
        result(f"{thread_id}: {states[thread_id]}")


@threads_app.command("remove")
@command
def remove(
    ctx: typer.Context,
    thread_ids: Ids = None,
    from_file: Annotated[str | None, _from_file("remove")] = None,
    column: Column = None,
    skip_invalid: SkipInvalid = False,
    verbose: Verbose = False,
) -> None:
    """Stop syncing threads (paused); what is mirrored is kept and stays exportable."""
    ids = gather_ids(
        thread_ids, from_file, column, skip_invalid=skip_invalid, verb="remove", done="removed"
    )
    mirror = globals_of(ctx).mirror(create=False)  # nothing to stop in a mirror never made
    with mirror.write() as session:
        done = pause_many(session, ids.ids)
    if verbose or from_file is None:
        _print_states(
            ids.ids,
            {
                **dict.fromkeys(done.paused, "paused"),
                **dict.fromkeys(done.already, "paused already"),
                **dict.fromkeys(done.untracked, "not tracked"),
            },
        )
    if from_file is not None:
        result(_remove_summary(ids, done))


def _remove_summary(ids: IdList, done: Pausing) -> str:
    parts = [
        (len(done.paused), "paused"),
        (len(done.already), "paused already"),
        (len(done.untracked), "not tracked"),
    ]
    return _counts(ids, parts)


@threads_app.command("discover")
@command
def discover_(
    ctx: typer.Context,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            envvar="THREADSYNC_THREADS__DISCOVER_DRY_RUN",
            help="Track nothing: print the ids that would be tracked, one per line.",
        ),
    ] = False,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            envvar="THREADSYNC_THREADS__DISCOVER_SINCE",
            help="Only threads created at or after this (date, ISO 8601 time or unix seconds;"
            " UTC).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Foundry classic: list the project's threads and track the new ones.

    Only Foundry classic can list threads (GET /threads); on the azure and openai profiles this
    exits 2: import the ids your application kept with `threads add --from-file` instead.
    Threads you paused with `threads remove` stay paused.
    """
    g = globals_of(ctx)
    settings = g.settings()
    check_can_discover(settings, "threads discover")
    created_since = parse_when(since, "--since")
    mirror = _existing_mirror(settings.database_url) if dry_run else g.mirror()

    async def go() -> Discovery:
        async with api_client(settings) as client:
            return await discover(client, mirror, since=created_since, dry_run=dry_run)

    found = run_async(go)
    if dry_run:
        if found.new:
            out_console.out("\n".join(found.new), highlight=False)
        notice(
            f"found {found.found:,} threads: {len(found.new):,} new (not tracked: dry run),"
            f" {found.already:,} already tracked",
            level="info",
        )
        return
    result(
        f"found {found.found:,} threads: {len(found.new):,} new, now tracked;"
        f" {found.already:,} already tracked"
    )


def _existing_mirror(url: str) -> Mirror | None:
    """The mirror if it exists; None for a SQLite file not made yet (a dry run creates none)."""
    path = sqlite_path(normalise_url(url))
    if path is not None and not path.exists():
        return None
    return Mirror(url, create=False)


@threads_app.command("list")
@command
def list_(
    ctx: typer.Context,
    as_json: Annotated[
        bool,
        typer.Option("--json", envvar="THREADSYNC_THREADS__JSON", help="One JSON object per line."),
    ] = False,
) -> None:
    """Tracked threads and their state (active, paused, gone)."""
    mirror = globals_of(ctx).mirror(create=False)
    with mirror.read() as session:
        rows = thread_statuses(session)
    if as_json:
        print_json_lines(
            {
                "thread_id": r.thread_id,
                "state": r.state,
                "gone_at": r.gone_at,
                "messages": r.messages,
            }
            for r in rows
        )
        return
    print_table(
        ("thread", "state", "messages", "gone at"),
        ((r.thread_id, r.state, str(r.messages), iso_utc(r.gone_at)) for r in rows),
        keys=("thread", "gone at"),
    )
