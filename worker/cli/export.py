"""`threadsync export`."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from worker.cli.common import command, err_console, globals_of
from worker.export.jsonl import write_jsonl
from worker.export.output import atomic_output
from worker.export.source import Selection, iter_rows


class Format(StrEnum):
    JSONL = "jsonl"


def register(app: typer.Typer) -> None:
    app.command("export")(export)


@command
def export(
    ctx: typer.Context,
    out: Annotated[
        str,
        typer.Option(
            "--out", "-o", envvar="THREADSYNC_EXPORT_OUT", help="A file path, or - for stdout."
        ),
    ],
    fmt: Annotated[
        Format,
        typer.Option("--format", "-f", envvar="THREADSYNC_EXPORT_FORMAT", help="Output format."),
    ] = Format.JSONL,
    thread: Annotated[
        list[str] | None, typer.Option("--thread", "-t", help="Only these threads (repeatable).")
    ] = None,
    include_deleted: Annotated[
        bool,
        typer.Option(
            "--include-deleted",
            help='Also write messages the server no longer lists, with "_threadsync":'
            ' {"deleted_at": ...} appended.',
        ),
    ] = False,
) -> None:
    """Write the mirrored messages, each thread in server order (oldest first)."""
    mirror = globals_of(ctx).mirror()
    selection = Selection(thread_ids=thread or None, include_deleted=include_deleted)
    with atomic_output(out) as stream:
        count = write_jsonl(iter_rows(mirror, selection), stream)
    if out != "-":
        err_console.print(f"exported {count} messages to {out}")
