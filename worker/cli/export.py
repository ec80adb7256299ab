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
from worker.cli.say import notice, result
from worker.cli.sync import print_report
from worker.errors import ConfigError
from worker.export.csv_format import write_csv
from worker.export.jsonl import write_jsonl, write_raw_jsonl
from worker.export.markdown import write_markdown
from worker.export.output import atomic_output, directory_output, new_output
from worker.export.parquet import write_parquet
from worker.export.progress import with_progress
from worker.export.source import Row, Selection, count_rows, iter_rows, thread_order
from worker.files import is_stdout
from worker.ids import check_ids
from worker.store import messages
from worker.store.db import Mirror
from worker.store.repo import tracked
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


def format_of_name(out: str) -> Format | None:
    """The format a file name asks for (``x.csv``, ``x.md.gz``), or None if it names none."""
    name = out.lower().removesuffix(".gz")
    for fmt, suffix in SUFFIX.items():
        if name.endswith(suffix):
            return fmt
    return None


def choose_format(out: str, given: Format | None) -> Format:
    """``--format`` if given, else what the output name says, else JSONL; a contradiction is an
    error rather than a file whose name lies about its content."""
    named = None if out == "-" or is_directory_target(out) else format_of_name(out)
    if given is not None and named is not None and given is not named:
        raise ConfigError(
            f"--out {out} names a {named.value} file but --format is {given.value};"
            f" drop --format or give the file a {SUFFIX[given]} name"
        )
    return given or named or Format.JSONL


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


def file_name(thread_id: str, suffix: str) -> str:
    """A thread's file in a directory export; an id that is no plain file name is refused (it
    would write outside the directory, or hide among the files being built)."""
    name = f"{thread_id}{suffix}"
    if thread_id in ("", ".", "..") or thread_id.startswith(".") or Path(name).name != name:
        raise ConfigError(
            f"--thread {thread_id!r} cannot name a file in a directory export; thread ids are"
            " letters, digits, - and _"
        )
    return name


def export_rows(
    mirror: Mirror, selection: Selection, fmt: Format, out: str, *, gzip: bool = False
) -> int:
    """Write the selection (a directory gets one file per thread); returns messages written."""
    writer = WRITERS[fmt]
    if not is_directory_target(out):
        if fmt is Format.JSONL and mirror.is_sqlite and not err_console.is_terminal:
            # Scripts and cron: the fast path (stored bytes out as they are, no progress bar).
            with atomic_output(out) as stream, mirror.read() as session:
                return write_raw_jsonl(messages.raw_batches(session, selection), stream)
        rows = with_progress(
            iter_rows(mirror, selection),
            total=count_rows(mirror, selection) if err_console.is_terminal else None,
            console=err_console,
        )
        with atomic_output(out) as stream:
            return writer(rows, stream)
    total = 0
    suffix = SUFFIX[fmt] + (".gz" if gzip else "")
    # Built aside, published at the end: a failure part-way leaves no partial set.
    with directory_output(Path(out)) as folder:
        for thread_id in thread_order(mirror, selection):
            one = Selection(
                thread_ids=[thread_id],
                include_deleted=selection.include_deleted,
                since=selection.since,
                until=selection.until,
                roles=selection.roles,
            )
            with new_output(folder / file_name(thread_id, suffix)) as stream:
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
            envvar="THREADSYNC_EXPORT__OUT",
            help="A file (.gz compresses), an existing directory or a path ending in / (one file"
            " per thread), or - for stdout.",
        ),
    ],
    fmt: Annotated[
        Format | None,
        typer.Option(
            "--format",
            "-f",
            envvar="THREADSYNC_EXPORT__FORMAT",
            help="Output format (default: from the --out name, .jsonl .csv .md .parquet with"
            " optional .gz; else jsonl).",
        ),
    ] = None,
    thread: Annotated[
        list[str] | None,
        typer.Option(
            "--thread",
            "-t",
            envvar="THREADSYNC_EXPORT__THREAD",
            help="Only these threads (repeatable).",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            envvar="THREADSYNC_EXPORT__SINCE",
            help="Messages created at or after this (date, ISO 8601 time or unix seconds; UTC).",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--until", envvar="THREADSYNC_EXPORT__UNTIL", help="Messages created before this."
        ),
    ] = None,
    role: Annotated[
        list[Role] | None,
        typer.Option(
            "--role", envvar="THREADSYNC_EXPORT__ROLE", help="Only this role (repeatable)."
        ),
    ] = None,
    include_deleted: Annotated[
        bool,
        typer.Option(
            "--include-deleted",
            envvar="THREADSYNC_EXPORT__INCLUDE_DELETED",
            help='Also write messages the server no longer lists (JSONL: "_threadsync":'
            ' {"deleted_at": ...} appended; CSV: deleted_at column; Markdown: marked deleted).',
        ),
    ] = False,
    gzip: Annotated[
        bool,
        typer.Option(
            "--gzip",
            envvar="THREADSYNC_EXPORT__GZIP",
            help="Directory output: compress each file (.gz). For a file, name it *.gz instead.",
        ),
    ] = False,
    sync_first: Annotated[
        bool,
        typer.Option("--sync", envvar="THREADSYNC_EXPORT__SYNC", help="Sync the threads first."),
    ] = False,
) -> None:
    """Write the mirrored messages, each thread in server order (oldest first)."""
    check_ids(thread or [])
    g = globals_of(ctx)
    chosen = choose_format(out, fmt)
    selection = Selection(
        thread_ids=thread or None,
        include_deleted=include_deleted,
        since=parse_when(since, "--since"),
        until=parse_when(until, "--until"),
        roles=[r.value for r in role] if role else None,
    )
    mirror = g.mirror(create=False)
    if thread:
        _check_held(mirror, thread)
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
                    gone_recheck=settings.sync.gone_recheck_interval,
                )

        report = run_async(go)
        print_report(report, stderr=is_stdout(out))
        synced = report.ok
    else:
        synced = True
    count = export_rows(mirror, selection, chosen, out, gzip=gzip)
    if not is_stdout(out):
        result(f"exported {count} messages to {out}")
    if not synced:
        notice("some threads did not sync; the export holds what the mirror had", level="error")
        raise typer.Exit(EXIT_FAILED)


def _check_held(mirror: Mirror, thread_ids: list[str]) -> None:
    """Refuse ``--thread`` naming a thread the mirror neither tracks nor holds messages of: an
    empty export would look like a thread with nothing in it."""
    with mirror.read() as session:
        held = set(tracked(session, thread_ids)) | messages.threads_holding(session, thread_ids)
    missing = [t for t in dict.fromkeys(thread_ids) if t not in held]
    if missing:
        raise ConfigError(
            f"--thread {missing[0]}: the mirror holds no such thread"
            + (f" (nor {len(missing) - 1} other named)" if len(missing) > 1 else "")
            + "; `threadsync threads list` shows the threads it holds"
        )
