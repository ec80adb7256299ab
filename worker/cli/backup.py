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

from worker.backup import (
    BackupResult,
    list_backups,
    restore,
    run_backup,
    verify,
)
from worker.backup.manifest import MANIFEST, read_totals
from worker.backup.verify import VerifyReport
from worker.cli.common import (
    EXIT_FAILED,
    api_client,
    command,
    globals_of,
    out_console,
    run_async,
)
from worker.cli.say import notice, result
from worker.cli.sync import print_report
from worker.cli.tables import iso_utc, print_json_lines, print_table
from worker.errors import ConfigError

backup_app = typer.Typer(
    rich_markup_mode=None,
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
            "--no-sync", envvar="THREADSYNC_BACKUP__NO_SYNC", help="Back up the mirror as it is."
        ),
    ] = False,
) -> None:
    """Sync, write a snapshot threadsync-<UTC time>/ into --dest, then apply retention."""
    if ctx.invoked_subcommand is not None:
        return
    g = globals_of(ctx)
    settings = g.settings()
    mirror = g.mirror(create=False)  # backing up nothing means the URL is wrong

    async def go() -> BackupResult:
        if no_sync:
            return await run_backup(settings, mirror, None, dest=dest, sync_first=False)
        async with api_client(settings) as client:
            return await run_backup(settings, mirror, client, dest=dest)

    done = run_async(go)
    if done.sync is not None:
        print_report(done.sync)
    s = done.snapshot
    result(
        f"backup {s.path}: {s.threads} threads, {s.messages} messages ({s.deleted} deleted),"
        f" {s.bytes / 1e6:.1f} MB; {len(done.removed)} old snapshots removed"
    )
    if done.sync_error is not None:
        notice(f"the sync before the backup stopped: {done.sync_error}", level="error")
        raise typer.Exit(EXIT_FAILED)
    if not done.sync_ok:
        notice("the sync before the backup failed for some threads", level="error")
        raise typer.Exit(EXIT_FAILED)


@backup_app.command("list")
@command
def list_command(
    dest: Annotated[Path, typer.Argument(help="A backup destination directory.")],
    as_json: Annotated[
        bool,
        typer.Option("--json", envvar="THREADSYNC_BACKUP__JSON", help="One JSON object per line."),
    ] = False,
) -> None:
    """Snapshots in DIR, oldest first, with their manifest totals (not verified; see verify)."""
    found = [(b, read_totals(b.path)) for b in list_backups(dest)]
    if as_json:
        print_json_lines(
            {
                "snapshot": b.path.name,
                "path": str(b.path),
                "taken_at": b.taken_at,
                "complete": b.complete,
                "threads": t.threads if t else None,
                "messages": t.messages if t else None,
                "deleted": t.deleted if t else None,
                "bytes": t.bytes if t else None,
            }
            for b, t in found
        )
        return
    print_table(
        ("snapshot", "taken at", "complete", "threads", "messages", "deleted", "size"),
        (
            (
                b.path.name,
                iso_utc(b.taken_at),
                "yes" if b.complete else "NO",
                *(
                    (str(t.threads), str(t.messages), str(t.deleted), _size(t.bytes))
                    if t
                    else ("?", "?", "?", "?")
                ),
            )
            for b, t in found
        ),
        keys=("snapshot", "taken at"),
    )
    if not found:
        notice(f"no snapshots in {dest}")


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def snapshot_of(path: Path) -> Path:
    """A snapshot directory itself, or ``DEST/latest`` / a destination: its newest complete one."""
    if path.name == "latest" and not path.exists():
        path = path.parent
    if (path / MANIFEST).exists() or not path.is_dir():
        return path
    complete = [b for b in list_backups(path) if b.complete]
    if not complete:
        raise ConfigError(f"{path} holds no complete snapshot; name a threadsync-<time>/ directory")
    newest = complete[-1].path
    notice(f"restoring the newest snapshot in {path}: {newest.name}", level="info")
    return newest


def _targets(path: Path) -> list[Path]:
    if (path / MANIFEST).exists() or not path.is_dir():
        return [path]
    return [b.path for b in list_backups(path)]


def _show(report: VerifyReport) -> None:
    if report.ok:
        result(
            f"ok {report.path}: {report.threads} threads, {report.messages} messages,"
            f" {report.deleted} deleted"
        )
    else:
        notice(f"DAMAGED {report.path}: {report.problem}", level="error", prefix=False)


@backup_app.command("verify")
@command
def verify_command(
    path: Annotated[Path, typer.Argument(help="A snapshot directory, or a destination of them.")],
    thorough: Annotated[
        bool,
        typer.Option(
            "--thorough",
            envvar="THREADSYNC_BACKUP__VERIFY_THOROUGH",
            help="SQLite's full integrity_check (every index entry against its row) instead of"
            " quick_check; about four times slower.",
        ),
    ] = False,
) -> None:
    """Check checksums, SQLite integrity, counts against the manifest and every JSONL line."""
    targets = _targets(path)
    if not targets:
        notice(f"no snapshots in {path}", level="error")
        raise typer.Exit(EXIT_FAILED)
    reports = [verify(t, thorough=thorough) for t in targets]
    for report in reports:
        _show(report)
    if not all(r.ok for r in reports):
        raise typer.Exit(EXIT_FAILED)


@command
def restore_command(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            help="A snapshot directory (threadsync-<time>/), or a destination directory or"
            " DEST/latest for its newest complete snapshot."
        ),
    ],
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="THREADSYNC_RESTORE__DATABASE_URL",
            help="The mirror to restore into (default: the global --database-url).",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            envvar="THREADSYNC_RESTORE__FORCE",
            help="Replace the contents of a non-empty mirror.",
        ),
    ] = False,
) -> None:
    """Verify a snapshot and copy it into an empty mirror (SQLite or PostgreSQL)."""
    url = database_url or globals_of(ctx).settings().database_url
    result = restore(snapshot_of(path), url, force=force)
    out_console.print(
        f"restored {result.live} messages ({result.deleted} deleted) into {result.target}"
        + (" (its previous contents replaced)" if result.replaced else "")
    )
