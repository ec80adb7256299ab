"""`threadsync export`: the mirror as JSONL, CSV, Markdown or Parquet, to a file, a directory
(one file per thread) or stdout; filtered by thread, time and role; optionally synced first."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Annotated

import typer

from worker.cli.common import EXIT_FAILED, api_client, command, err_console, globals_of, run_async
from worker.cli.sync import print_report
from worker.errors import ConfigError
from worker.export.csv_format import write_csv
from worker.export.jsonl import write_jsonl, write_sqlite_jsonl
from worker.export.markdown import write_markdown
from worker.export.output import atomic_output
from worker.export.parquet import write_parquet
from worker.export.progress import with_progress
from worker.export.source import Row, Selection, count_rows, iter_rows, thread_order
from worker.ids import check_ids
from worker.store.db import Mirror
from worker.sync.runner import RunReport, sync_threads


class Format(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"
    MARKDOWN = "markdown"
    PARQUET = "parquet"


class Role(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


Writer = Callable[[Iterable[Row], IO[bytes]], int]
WRITERS: dict[Format, Writer] = {
    Format.JSONL: write_jsonl,
    Format.CSV: write_csv,
    Format.MARKDOWN: write_markdown,
    Format.PARQUET: write_parquet,
}
SUFFIX = {
    Format.JSONL: ".jsonl",
    Format.CSV: ".csv",
    Format.MARKDOWN: ".md",
    Format.PARQUET: ".parquet",
}


def register(app: typer.Typer) -> None:
    app.command("export")(export)


def parse_when(value: str | None, option: str) -> int | None:
    """Unix seconds from ``1700000000``, ``2024-05-01`` or ``2024-05-01T12:00:00[Z|+02:00]``
    (no offset means UTC)."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{option} {value!r}: wanted a date, an ISO 8601 time or unix seconds"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp())


def is_directory_target(out: str) -> bool:
    return out != "-" and (out.endswith("/") or Path(out).is_dir())


def export_rows(
    mirror: Mirror, selection: Selection, fmt: Format, out: str, *, gzip: bool = False
) -> int:
    """Write the selection (a directory gets one file per thread); returns messages written."""
    writer = WRITERS[fmt]
    if not is_directory_target(out):
        if fmt is Format.JSONL and mirror.is_sqlite and not err_console.is_terminal:
            # Scripts and cron: the fast path (stored bytes out as they are, no progress bar).
            with atomic_output(out) as stream, mirror.read() as session:
                conn = session.connection().connection.driver_connection
                return write_sqlite_jsonl(conn, selection, stream)
        rows = with_progress(
            iter_rows(mirror, selection),
            total=count_rows(mirror, selection) if err_console.is_terminal else None,
            console=err_console,
        )
        with atomic_output(out) as stream:
            return writer(rows, stream)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    suffix = SUFFIX[fmt] + (".gz" if gzip else "")
    for thread_id in thread_order(mirror, selection):
        one = Selection(
            thread_ids=[thread_id],
            include_deleted=selection.include_deleted,
            since=selection.since,
            until=selection.until,
            roles=selection.roles,
        )
        with atomic_output(folder / f"{thread_id}{suffix}") as stream:
            total += writer(iter_rows(mirror, one), stream)
    return total


@command
def export(
    ctx: typer.Context,
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            envvar="THREADSYNC_EXPORT_OUT",
            help="A file (.gz compresses), an existing directory or a path ending in / (one file"
            " per thread), or - for stdout.",
        ),
    ],
    fmt: Annotated[
        Format,
        typer.Option("--format", "-f", envvar="THREADSYNC_EXPORT_FORMAT", help="Output format."),
    ] = Format.JSONL,
    thread: Annotated[
        list[str] | None,
        typer.Option(
            "--thread",
            "-t",
            envvar="THREADSYNC_EXPORT_THREAD",
            help="Only these threads (repeatable).",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            envvar="THREADSYNC_EXPORT_SINCE",
            help="Messages created at or after this (date, ISO 8601 time or unix seconds; UTC).",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--until", envvar="THREADSYNC_EXPORT_UNTIL", help="Messages created before this."
        ),
    ] = None,
    role: Annotated[
        list[Role] | None,
        typer.Option(
            "--role", envvar="THREADSYNC_EXPORT_ROLE", help="Only this role (repeatable)."
        ),
    ] = None,
    include_deleted: Annotated[
        bool,
        typer.Option(
            "--include-deleted",
            envvar="THREADSYNC_EXPORT_INCLUDE_DELETED",
            help='Also write messages the server no longer lists (JSONL: "_threadsync":'
            ' {"deleted_at": ...} appended; CSV: deleted_at column; Markdown: marked deleted).',
        ),
    ] = False,
    gzip: Annotated[
        bool,
        typer.Option(
            "--gzip",
            envvar="THREADSYNC_EXPORT_GZIP",
            help="Directory output: compress each file (.gz). For a file, name it *.gz instead.",
        ),
    ] = False,
    sync_first: Annotated[
        bool,
        typer.Option("--sync", envvar="THREADSYNC_EXPORT_SYNC", help="Sync the threads first."),
    ] = False,
) -> None:
    """Write the mirrored messages, each thread in server order (oldest first)."""
    check_ids(thread or [])
    g = globals_of(ctx)
    selection = Selection(
        thread_ids=thread or None,
        include_deleted=include_deleted,
        since=parse_when(since, "--since"),
        until=parse_when(until, "--until"),
        roles=[r.value for r in role] if role else None,
    )
    mirror = g.mirror()
    if sync_first:
        settings = g.settings()

        async def go() -> RunReport:
            async with api_client(settings) as client:
                return await sync_threads(
                    client,
                    mirror,
                    thread_ids=selection.thread_ids,
                    concurrency=settings.sync.concurrency,
                    page_limit=settings.sync.page_limit,
                )

        report = run_async(go)
        print_report(report)
        synced = report.ok
    else:
        synced = True
    count = export_rows(mirror, selection, fmt, out, gzip=gzip)
    if out != "-":
        err_console.print(f"exported {count} messages to {out}")
    if not synced:
        err_console.print("[red]some threads did not sync; the export holds what the mirror had[/]")
        raise typer.Exit(EXIT_FAILED)
