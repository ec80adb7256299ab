"""`threadsync sync` and `threadsync status`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import orjson
import typer
from rich.table import Table

from worker.cli.common import (
    EXIT_FAILED,
    api_client,
    command,
    err_console,
    globals_of,
    out_console,
    run_async,
)
from worker.ids import check_ids
from worker.outbox import edit_counts
from worker.store.repo import thread_statuses
from worker.sync.runner import RunReport, sync_threads


def register(app: typer.Typer) -> None:
    app.command("sync")(sync)
    app.command("status")(status)


@command
def sync(
    ctx: typer.Context,
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            envvar="THREADSYNC_SYNC_FULL",
            help="Reconcile: walk every thread completely, notice deletions and remote edits.",
        ),
    ] = False,
    thread: Annotated[
        list[str] | None,
        typer.Option(
            "--thread",
            "-t",
            envvar="THREADSYNC_SYNC_THREAD",
            help="Only these tracked threads (repeatable; the variable: space-separated).",
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            envvar="THREADSYNC_SYNC__CONCURRENCY",
            min=1,
            max=256,
            help="Threads synced at once (default 8).",
        ),
    ] = None,
) -> None:
    """Mirror every tracked thread once, then exit (0 only if every thread synced)."""
    check_ids(thread or [])
    g = globals_of(ctx)
    settings = g.settings(sync={"concurrency": concurrency})
    mirror = g.mirror()

    async def go() -> RunReport:
        async with api_client(settings) as client:
            return await sync_threads(
                client,
                mirror,
                thread_ids=thread or None,
                full=full,
                concurrency=settings.sync.concurrency,
                page_limit=settings.sync.page_limit,
            )

    report = run_async(go)
    print_report(report)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def print_report(report: RunReport) -> None:
    c = report.counts
    total = len(report.outcomes)
    failed = report.failed
    err_console.print(
        f"{report.kind} run {report.run_id}: {total - len(failed)}/{total} threads ok;"
        f" {c.added} added, {c.changed} changed, {c.deleted} deleted, {c.restored} restored;"
        f" {report.requests} requests in {report.seconds:.1f}s"
    )
    for o in report.outcomes:
        if o.result == "gone":
            err_console.print(f"  {o.thread_id}: gone ({o.error})")
    for o in failed:
        err_console.print(f"  [red]{o.thread_id}: {o.result}[/]: {o.error}")


def _when(value: datetime | None) -> str:
    if value is None:
        return "never"
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@command
def status(
    ctx: typer.Context,
    as_json: Annotated[
        bool,
        typer.Option("--json", envvar="THREADSYNC_STATUS_JSON", help="One JSON object per line."),
    ] = False,
) -> None:
    """Per thread: messages, last sync, state, last error."""
    mirror = globals_of(ctx).mirror()
    with mirror.read() as session:
        rows = thread_statuses(session)
    if as_json:
        for r in rows:
            out_console.out(
                orjson.dumps(
                    {
                        "thread_id": r.thread_id,
                        "state": r.state,
                        "messages": r.messages,
                        "deleted": r.deleted,
                        "in_progress": r.in_progress,
                        "first_sync_done": r.initial_done,
                        "last_sync_at": r.last_sync_at,
                        "last_success_at": r.last_success_at,
                        "gone_at": r.gone_at,
                        "last_error": r.last_error,
                    },
                    option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z,
                ).decode()
            )
        return
    table = Table(
        "thread", "state", "messages", "deleted", "last sync", "last success", "last error"
    )
    for r in rows:
        table.add_row(
            r.thread_id,
            r.state if r.initial_done or r.state != "active" else "active (first sync pending)",
            str(r.messages),
            str(r.deleted),
            _when(r.last_sync_at),
            _when(r.last_success_at),
            r.last_error or "",
        )
    out_console.print(table)
    with mirror.read() as session:
        edits = edit_counts(session)
    out_console.print(
        f"metadata edits: {edits['pending']} pending, {edits['conflicted']} conflicted,"
        f" {edits['failed']} failed"
    )
    if not rows:
        err_console.print("no tracked threads; add some with `threadsync threads add THREAD_ID`")
