"""`threadsync threads add|list|remove`: which threads the mirror follows."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from worker.cli.common import command, fail, globals_of, out_console
from worker.cli.tables import iso_utc, print_json_lines, print_table
from worker.store.repo import add_threads, remove_threads, thread_statuses, tracked

threads_app = typer.Typer(
    rich_markup_mode=None, help="Choose the threads to mirror (the API cannot list them)."
)
THREAD_ID = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")


def register(app: typer.Typer) -> None:
    app.add_typer(threads_app, name="threads")


def _check_ids(ids: list[str]) -> None:
    for thread_id in ids:
        if not THREAD_ID.match(thread_id):
            raise fail(
                f"{thread_id!r} is not a thread id; ids look like thread_abc123"
                " (letters, digits, _ and -)"
            )


@threads_app.command("add")
@command
def add(
    ctx: typer.Context,
    thread_ids: Annotated[list[str], typer.Argument(help="Thread ids, e.g. thread_abc123.")],
) -> None:
    """Track threads; they are synced by the next `threadsync sync` (or the running daemon).
    A thread removed earlier, or marked gone, is tracked again and synced at once."""
    _check_ids(thread_ids)
    mirror = globals_of(ctx).mirror()
    with mirror.write() as session:
        before = {t: row.state for t, row in tracked(session, thread_ids).items()}
        added = add_threads(session, thread_ids)
    for thread_id in thread_ids:
        was = before.get(thread_id)
        if thread_id not in added:
            state = "already tracked"
        elif was is None:
            state = "added"
        else:
            state = f"reactivated (was {was})"
        out_console.print(f"{thread_id}: {state}")


@threads_app.command("remove")
@command
def remove(
    ctx: typer.Context,
    thread_ids: Annotated[list[str], typer.Argument(help="Thread ids to stop syncing.")],
) -> None:
    """Stop syncing threads; what is mirrored is kept and stays exportable."""
    _check_ids(thread_ids)
    mirror = globals_of(ctx).mirror(create=False)  # nothing to stop in a mirror never made
    with mirror.write() as session:
        removed = remove_threads(session, thread_ids)
    for thread_id in thread_ids:
        out_console.print(f"{thread_id}: {'paused' if thread_id in removed else 'not tracked'}")


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
