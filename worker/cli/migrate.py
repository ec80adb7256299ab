"""`threadsync migrate`: mirrored threads into the Conversations API, exactly once; and
`migrate status`, `migrate verify`, `migrate map`."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape

from worker.cli.common import (
    EXIT_FAILED,
    command,
    globals_of,
    out_console,
    run_async,
)
from worker.cli.export import parse_when
from worker.cli.say import notice, result
from worker.cli.tables import print_json_lines, print_table
from worker.config import Settings
from worker.export.output import atomic_output
from worker.files import is_stdout
from worker.migrate import ledger
from worker.migrate.models import MigrateThread
from worker.migrate.run import MigrateReport
from worker.migrate.service import client_of, policy_of, run_migration
from worker.migrate.target import base_url, target_key
from worker.migrate.verify import Verdict, verify_thread
from worker.store.db import Mirror

app = typer.Typer(
    help="Move mirrored threads into the Conversations API (OpenAI, Foundry), exactly once.",
    no_args_is_help=False,
    invoke_without_command=True,
)

ThreadOption = Annotated[
    list[str] | None,
    typer.Option(
        "--thread",
        "-t",
        envvar="THREADSYNC_MIGRATE__THREAD",
        help="Only these threads (repeatable; the variable: space-separated).",
    ),
]


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="migrate")


@app.callback()
@command
def migrate(
    ctx: typer.Context,
    thread: ThreadOption = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            envvar="THREADSYNC_MIGRATE__DRY_RUN",
            help="Send nothing: per thread the items and every change.",
        ),
    ] = False,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            envvar="THREADSYNC_MIGRATE__SINCE",
            help="Only threads with a message at or after this time (date, ISO 8601, unix s).",
        ),
    ] = None,
) -> None:
    """Each chosen thread (first sync finished, or imported) becomes one conversation; its
    messages are appended in server order, at most 20 per call. Run again to append what was
    mirrored since; a failed or killed run is resumed without sending anything twice."""
    if ctx.invoked_subcommand is not None:
        return
    g = globals_of(ctx)
    settings = g.settings()
    when = parse_when(since, "--since")
    base_url(settings.migrate.target)  # a misconfigured target fails before anything is read
    mirror = g.mirror()
    report = run_async(
        lambda: run_migration(
            settings, mirror, thread_ids=thread or None, since=when, dry_run=dry_run
        )
    )
    if dry_run:
        print_dry_run(report)
    else:
        print_report(report, target_key(settings.migrate.target))
    if report.failed:
        raise typer.Exit(EXIT_FAILED)


def print_report(report: MigrateReport, target: str) -> None:
    t = report.totals()
    result(
        f"migrate to {target}: {t['threads'] - t['failed']}/{t['threads']} threads ok;"
        f" {t['items']} items in {t['requests']} requests; {t['dropped']} parts dropped,"
        f" {t['replaced']} replaced"
    )
    if t["lost_creates"]:
        result(
            f"  {t['lost_creates']} create(s) of unknown outcome, sent again: an empty conversation"
            " (metadata only, no items) may be left on the target for each; see `migrate status`"
        )
    for o in report.failed:
        result(f"  {o.thread_id}: {o.error or ''}")


def print_dry_run(report: MigrateReport) -> None:
    for o in report.threads:
        if o.error:
            out_console.print(f"{escape(o.thread_id)}: [red]cannot go[/]: {escape(o.error)}")
            continue
        where = o.conversation_id or "a new conversation"
        pending = f"; {o.settled} batch(es) to settle first" if o.settled else ""
        out_console.print(
            f"{escape(o.thread_id)}: {o.items} items in {o.requests} requests to"
            f" {escape(where)}{pending}"
        )
        for c in o.changes:
            out_console.print(
                f"  {escape(c.message_id)} {escape(c.part)}: {c.action} ({escape(c.reason)})"
            )
    t = report.totals()
    out_console.print(
        f"dry run, nothing sent: {t['threads'] - t['failed']} threads, {t['items']} items in"
        f" {t['requests']} requests; {t['dropped']} parts dropped, {t['replaced']} replaced;"
        f" {t['failed']} cannot go"
    )


def _iso(value: datetime | None) -> str:
    if value is None:
        return ""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rows(ctx: typer.Context) -> tuple[Settings, Mirror, list[MigrateThread]]:
    g = globals_of(ctx)
    settings = g.settings()
    mirror = g.mirror()
    return settings, mirror, ledger.rows(mirror, target_key(settings.migrate.target))


@app.command("status")
@command
def status(
    ctx: typer.Context,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", envvar="THREADSYNC_MIGRATE__STATUS_JSON", help="One JSON object per line."
        ),
    ] = False,
) -> None:
    """Per thread: the conversation, items confirmed, parts dropped or replaced, last error."""
    settings, mirror, rows = _rows(ctx)
    lost = ledger.lost_creates(mirror, target_key(settings.migrate.target))
    if as_json:
        print_json_lines(
            {
                "thread_id": r.thread_id,
                "conversation_id": r.conversation_id,
                "state": r.state,
                "items": r.items,
                "dropped": r.dropped,
                "replaced": r.replaced,
                "lost_creates": r.lost_creates,
                # When each was sent: an empty conversation naming the thread may date from then.
                "lost_create_times": [_iso(t) for t in lost.get(r.thread_id, [])],
                "migrated_at": r.migrated_at,
                "last_error": r.last_error,
            }
            for r in rows
        )
        return
    print_table(
        (
            "thread",
            "conversation",
            "state",
            "items",
            "dropped",
            "replaced",
            "lost creates",
            "last error",
        ),
        (
            (
                r.thread_id,
                r.conversation_id or "",
                r.state,
                str(r.items),
                str(r.dropped),
                str(r.replaced),
                str(r.lost_creates),
                r.last_error or "",
            )
            for r in rows
        ),
        keys=("thread", "conversation"),
    )
    if not rows:
        notice("nothing migrated to this target yet; run `threadsync migrate`")
    orphans = sum(r.lost_creates for r in rows)
    if orphans:
        notice(
            f"{orphans} create(s) of unknown outcome: an empty conversation (no items) may exist"
            " on the target for each, referenced by nothing; see README, migration section"
        )


@app.command("verify")
@command
def verify(ctx: typer.Context, thread: ThreadOption = None) -> None:
    """List each conversation's items and compare them with the mirror (count, order, role,
    content after mapping); exit 1 naming the first difference."""
    settings, mirror, rows = _rows(ctx)
    by_thread = {r.thread_id: r for r in rows}
    chosen = list(dict.fromkeys(thread)) if thread else list(by_thread)
    missing = [t for t in chosen if t not in by_thread]

    async def go() -> list[Verdict]:
        async with client_of(settings) as client:
            return [
                await verify_thread(mirror, client, by_thread[t], policy_of(settings))
                for t in chosen
                if t in by_thread
            ]

    verdicts = run_async(go)
    bad = 0
    for t in missing:
        bad += 1
        out_console.print(f"{escape(t)}: [red]not migrated to this target[/]")
    for v in verdicts:
        if v.difference is None:
            out_console.print(f"{escape(v.thread_id)}: ok, {v.found} items")
        else:
            bad += 1
            out_console.print(
                f"{escape(v.thread_id)}: [red]conversation {escape(v.conversation_id or '-')}:"
                f" {escape(v.difference)}[/]"
            )
    out_console.print(f"verified {len(chosen)} threads: {len(chosen) - bad} identical, {bad} not")
    if bad:
        raise typer.Exit(EXIT_FAILED)


@app.command("map")
@command
def map_(
    ctx: typer.Context,
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            envvar="THREADSYNC_MIGRATE__MAP_OUT",
            help="The CSV file (or - for stdout).",
        ),
    ],
) -> None:
    """CSV ``thread_id,conversation_id,messages,items,migrated_at`` for applications to update
    their own tables (``messages``: live messages in the mirror; ``items``: confirmed)."""
    _, mirror, rows = _rows(ctx)
    counts = ledger.live_counts(mirror)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["thread_id", "conversation_id", "messages", "items", "migrated_at"])
    written = 0
    for r in rows:
        if r.conversation_id is None:
            continue
        writer.writerow(
            [
                r.thread_id,
                r.conversation_id,
                counts.get(r.thread_id, 0),
                r.items,
                _iso(r.migrated_at),
            ]
        )
        written += 1
    with atomic_output(out) as fh:
        fh.write(buffer.getvalue().encode())
    result(f"{written} threads mapped to conversations", stderr=is_stdout(out))
