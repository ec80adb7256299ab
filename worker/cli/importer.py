"""`threadsync import FILE`: message objects saved elsewhere into the mirror (threads marked
``imported``: never synced, but exportable and migratable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from worker.cli.common import command, globals_of
from worker.cli.say import result
from worker.migrate.importing import import_file


def register(app: typer.Typer) -> None:
    app.command("import")(import_)


@command
def import_(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(help="JSON lines, one API message object a line (.gz accepted).")
    ],
    thread_field: Annotated[
        str,
        typer.Option(
            "--thread-field",
            envvar="THREADSYNC_IMPORT__THREAD_FIELD",
            help="The field of each object naming its thread.",
        ),
    ] = "thread_id",
) -> None:
    """Import message objects (as `export --format jsonl` writes them) as threads marked
    imported. Every line is checked first: a bad line is named and nothing is imported.
    Importing the same file again changes nothing."""
    mirror = globals_of(ctx).mirror()
    report = import_file(mirror, file, thread_field)
    total = sum(report.threads.values())
    result(
        f"imported {total} messages of {len(report.threads)} threads: {report.added} added,"
        f" {report.changed} changed, {report.unchanged} unchanged"
    )
