"""`threadsync backup` (take a snapshot, then apply retention), `backup list`, `backup verify`, and
`threadsync restore`.

Exit codes follow `worker/cli/common.py`: 1 for a failed backup, a damaged snapshot, a busy lock or
a sync that failed (the snapshot is still written); 2 for bad arguments or a non-empty restore
target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from worker.backup import (
    BackupResult,
    list_backups,
    restore,
    run_backup,
    verify,
)
from worker.backup.manifest import MANIFEST
from worker.backup.verify import VerifyReport
from worker.cli.common import (
    EXIT_FAILED,
    api_client,
    command,
    err_console,
    globals_of,
    out_console,
    run_async,
)
from worker.cli.sync import print_report

backup_app = typer.Typer(
    help="Snapshots of the mirror: take one (default), list them, verify them.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def register(app: typer.Typer) -> None:
    app.add_typer(backup_app, name="backup")
    app.command("restore")(restore_command)


@backup_app.callback()
@command
def backup(
    ctx: typer.Context,
    dest: Annotated[
        Path | None,
        typer.Option(
            "--dest",
            envvar="THREADSYNC_BACKUP__DEST",
            help="Directory holding the snapshots (default: backup.dest from the config).",
        ),
    ] = None,
    no_sync: Annotated[
        bool,
        typer.Option(
            "--no-sync", envvar="THREADSYNC_BACKUP_NO_SYNC", help="Back up the mirror as it is."
        ),
    ] = False,
) -> None:
    """Sync, write a snapshot threadsync-<UTC time>/ into --dest, then apply retention."""
    if ctx.invoked_subcommand is not None:
        return
    g = globals_of(ctx)
    settings = g.settings()
    mirror = g.mirror()

    async def go() -> BackupResult:
        if no_sync:
            return await run_backup(settings, mirror, None, dest=dest, sync_first=False)
        async with api_client(settings) as client:
            return await run_backup(settings, mirror, client, dest=dest)

    result = run_async(go)
    if result.sync is not None:
        print_report(result.sync)
    s = result.snapshot
    err_console.print(
        f"backup {s.path}: {s.threads} threads, {s.messages} messages ({s.deleted} deleted),"
        f" {s.bytes / 1e6:.1f} MB; {len(result.removed)} old snapshots removed"
    )
    if result.sync_error is not None:
        err_console.print(
            f"[red]error:[/] the sync before the backup stopped: {escape(result.sync_error)}"
        )
        raise typer.Exit(EXIT_FAILED)
    if not result.sync_ok:
        err_console.print("[red]error:[/] the sync before the backup failed for some threads")
        raise typer.Exit(EXIT_FAILED)


@backup_app.command("list")
@command
def list_command(
    dest: Annotated[Path, typer.Argument(help="A backup destination directory.")],
) -> None:
    """Snapshots in DIR, oldest first, with their manifest totals (not verified; see verify)."""
    table = Table("snapshot", "taken at (UTC)", "complete")
    found = list_backups(dest)
    for b in found:
        table.add_row(
            b.path.name, b.taken_at.strftime("%Y-%m-%d %H:%M:%S"), "yes" if b.complete else "NO"
        )
    out_console.print(table)
    if not found:
        err_console.print(f"no snapshots in {dest}")


def _targets(path: Path) -> list[Path]:
    if (path / MANIFEST).exists() or not path.is_dir():
        return [path]
    return [b.path for b in list_backups(path)]


def _show(report: VerifyReport) -> None:
    if report.ok:
        err_console.print(
            f"ok {report.path}: {report.threads} threads, {report.messages} messages,"
            f" {report.deleted} deleted"
        )
    else:
        err_console.print(f"[bold red]DAMAGED[/] {report.path}: {report.problem}")


@backup_app.command("verify")
@command
def verify_command(
    path: Annotated[Path, typer.Argument(help="A snapshot directory, or a destination of them.")],
    thorough: Annotated[
        bool,
        typer.Option(
            "--thorough",
            envvar="THREADSYNC_VERIFY_THOROUGH",
            help="SQLite's full integrity_check (every index entry against its row) instead of"
            " quick_check; about four times slower.",
        ),
    ] = False,
) -> None:
    """Check checksums, SQLite integrity, counts against the manifest and every JSONL line."""
    targets = _targets(path)
    if not targets:
        err_console.print(f"[bold red]error:[/] no snapshots in {path}")
        raise typer.Exit(EXIT_FAILED)
    reports = [verify(t, thorough=thorough) for t in targets]
    for report in reports:
        _show(report)
    if not all(r.ok for r in reports):
        raise typer.Exit(EXIT_FAILED)


@command
def restore_command(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A snapshot directory (threadsync-<time>/).")],
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="THREADSYNC_RESTORE_DATABASE_URL",
            help="The mirror to restore into (default: the global --database-url).",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            envvar="THREADSYNC_RESTORE_FORCE",
            help="Replace the contents of a non-empty mirror.",
        ),
    ] = False,
) -> None:
    """Verify a snapshot and copy it into an empty mirror (SQLite or PostgreSQL)."""
    url = database_url or globals_of(ctx).settings().database_url
    result = restore(path, url, force=force)
    err_console.print(
        f"restored {result.messages} messages into {result.target}"
        + (" (its previous contents replaced)" if result.replaced else "")
    )
