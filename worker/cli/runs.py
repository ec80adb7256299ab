"""`threadsync runs` and `threadsync runs show ID`: the run history the mirror keeps."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from worker.cli.common import command, fail, globals_of, out_console
from worker.cli.tables import iso_utc, print_json_lines, print_table
from worker.store.models import SyncRun, SyncRunThread
from worker.store.runs import outcome_of, recent_runs, run_threads

runs_app = typer.Typer(
    rich_markup_mode=None,
    help="The history of sync runs: per run, and per thread of a run.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")


def _run_json(run: SyncRun) -> dict[str, Any]:
    return {
        "run_id": run.id,
        "kind": run.kind,
        "outcome": outcome_of(run),
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "threads_ok": run.threads_ok,
        "threads_failed": run.threads_failed,
        "added": run.added,
        "changed": run.changed,
        "deleted": run.deleted,
        "restored": run.restored,
        "requests": run.requests,
    }


def _thread_json(row: SyncRunThread) -> dict[str, Any]:
    return {
        "thread_id": row.thread_id,
        "ok": row.ok,
        "error": row.error,
        "added": row.added,
        "changed": row.changed,
        "deleted": row.deleted,
        "restored": row.restored,
        "requests": row.requests,
    }


@runs_app.callback()
@command
def runs(
    ctx: typer.Context,
    limit: Annotated[
        int,
        typer.Option(
            "--limit",
            "-n",
            envvar="THREADSYNC_RUNS__LIMIT",
            min=1,
            metavar="N",
            help="How many runs, newest first.",
        ),
    ] = 20,
    as_json: Annotated[
        bool,
        typer.Option("--json", envvar="THREADSYNC_RUNS__JSON", help="One JSON object per line."),
    ] = False,
) -> None:
    """The newest runs: when, what kind, how they ended, what they did."""
    if ctx.invoked_subcommand is not None:
        return
    with globals_of(ctx).mirror(create=False).read() as session:
        found = recent_runs(session, limit)
    if as_json:
        print_json_lines(_run_json(r) for r in found)
        return
    print_table(
        (
            "run",
            "kind",
            "outcome",
            "started",
            "finished",
            "threads ok",
            "failed",
            "added",
            "changed",
            "deleted",
            "restored",
            "requests",
        ),
        (
            (
                str(r.id),
                r.kind,
                outcome_of(r),
                iso_utc(r.started_at),
                iso_utc(r.finished_at),
                str(r.threads_ok),
                str(r.threads_failed),
                str(r.added),
                str(r.changed),
                str(r.deleted),
                str(r.restored),
                str(r.requests),
            )
            for r in found
        ),
        keys=("run", "started", "finished"),
    )
    if not found:
        out_console.print("no runs yet; `threadsync sync` makes one")


@runs_app.command("show")
@command
def show(
    ctx: typer.Context,
    run_id: Annotated[int, typer.Argument(metavar="ID", help="A run id from `threadsync runs`.")],
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", envvar="THREADSYNC_RUNS__JSON", help="The run, then one line per thread."
        ),
    ] = False,
) -> None:
    """One run: its totals, then what it did to each thread (failures first)."""
    with globals_of(ctx).mirror(create=False).read() as session:
        run, threads = run_threads(session, run_id)
    if run is None:
        raise fail(f"no run {run_id} in this mirror; `threadsync runs` lists them")
    if as_json:
        print_json_lines([_run_json(run), *(_thread_json(t) for t in threads)])
        return
    r = run
    out_console.print(
        f"run {r.id} ({r.kind}): {outcome_of(r)}; started {iso_utc(r.started_at)},"
        f" finished {iso_utc(r.finished_at, empty='-')}; {r.threads_ok} threads ok,"
        f" {r.threads_failed} failed; {r.added} added, {r.changed} changed, {r.deleted} deleted,"
        f" {r.restored} restored; {r.requests} requests"
    )
    print_table(
        ("thread", "ok", "added", "changed", "deleted", "restored", "requests", "error"),
        (
            (
                t.thread_id,
                "yes" if t.ok else "NO",
                str(t.added),
                str(t.changed),
                str(t.deleted),
                str(t.restored),
                str(t.requests),
                t.error or "",
            )
            for t in threads
        ),
        keys=("thread",),
    )
