"""`threadsync sync` and `threadsync status`."""

from __future__ import annotations

import functools
from collections.abc import Awaitable
from typing import Annotated, TypeVar

import anyio
import typer

from worker.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    api_client,
    command,
    err_console,
    globals_of,
    out_console,
    run_async,
)
from worker.cli.progress import RunWatch, show_progress
from worker.cli.say import is_quiet, notice, result
from worker.cli.signals import run_interruptible
from worker.cli.tables import iso_utc, print_json_lines, print_table
from worker.config import Settings, format_duration, parse_duration
from worker.daemon.lag import describe_lag, lag_fields, recent_lag, thread_schedules
from worker.daemon.replicas import lease_holders, replica_rows
from worker.errors import ConfigError
from worker.ids import check_ids
from worker.outbox import edit_counts
from worker.store.db import Mirror
from worker.store.models import utcnow
from worker.store.repo import any_tracked, thread_statuses
from worker.sync.outcome import ThreadOutcome
from worker.sync.runner import NOT_REACHED, STOPPED, RunReport, sync_threads

T = TypeVar("T")


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
            envvar="THREADSYNC_SYNC__FULL",
            help="Reconcile: walk every thread completely, notice deletions and remote edits.",
        ),
    ] = False,
    thread: Annotated[
        list[str] | None,
        typer.Option(
            "--thread",
            "-t",
            envvar="THREADSYNC_SYNC__THREAD",
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
    deadline: Annotated[
        str | None,
        typer.Option(
            "--deadline",
            envvar="THREADSYNC_SYNC__DEADLINE",
            metavar="DURATION",
            help="Bound the whole run (e.g. 90s, 30m, 1h30m): no thread starts after it, passes"
            " still running stop (what they wrote is kept); exit 1 when threads were left.",
        ),
    ] = None,
) -> None:
    """Mirror every tracked thread once, then exit (0 only if every thread synced)."""
    check_ids(thread or [])
    limit = deadline_seconds(deadline)
    g = globals_of(ctx)
    settings = g.settings(sync={"concurrency": concurrency})
    mirror = g.mirror()
    if not thread and not _anything_tracked(mirror):
        run_async(functools.partial(_client_builds, settings))  # a bad credential still fails
        notice(
            "no threads are tracked, so there is nothing to sync; track some with"
            " `threadsync threads add THREAD_ID...` (or `threads add --from-file FILE`)"
        )
        return
    watch = RunWatch()

    async def go() -> RunReport:
        async with api_client(settings, events=watch) as client:
            return await _with_progress(
                watch,
                settings.sync.progress_interval,
                sync_threads(
                    client,
                    mirror,
                    thread_ids=thread or None,
                    full=full,
                    concurrency=settings.sync.concurrency,
                    page_limit=settings.sync.page_limit,
                    on_thread_done=watch.thread_done,
                    on_run_started=watch.run_started,
                    deadline=limit,
                    gone_recheck=settings.sync.gone_recheck_interval,
                ),
            )

    report = run_interruptible(go)
    if report is None:
        saved = watch.report.saved if watch.report is not None else 0
        notice(
            f"interrupted: {saved} messages saved; run again to resume", level="error", prefix=False
        )
        raise typer.Exit(EXIT_INTERRUPTED)
    print_report(report)
    print_deadline(report, limit)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


async def _client_builds(settings: Settings) -> None:
    """Build the client and close it, sending nothing: its settings are checked as a run would."""
    async with api_client(settings):
        pass


def _anything_tracked(mirror: Mirror) -> bool:
    with mirror.read() as session:
        return any_tracked(session)


async def _with_progress(watch: RunWatch, interval: float, work: Awaitable[T]) -> T:
    """``work``'s value, with the progress display (or periodic log) running beside it."""
    if is_quiet():
        return await work
    value: list[T] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(show_progress, watch, err_console, interval=interval))
        value.append(await work)
        tg.cancel_scope.cancel()
    return value[0]


def deadline_seconds(value: str | None) -> float | None:
    """``--deadline`` in seconds (None: no deadline); a bad value is a usage error."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigError(f"--deadline: {exc}") from None


def print_deadline(report: RunReport, deadline: float | None) -> None:
    """One line saying what the deadline left undone, when it left anything."""
    if deadline is None:
        return
    left = [o for o in report.outcomes if o.result == NOT_REACHED]
    stopped = [o for o in report.outcomes if o.result == STOPPED]
    if left or stopped:
        result(
            f"deadline {format_duration(deadline)} reached: {len(left)} threads not reached,"
            f" {len(stopped)} stopped mid-pass (their pages so far are kept); run"
            " `threadsync sync` again to continue"
        )


def print_report(report: RunReport, *, stderr: bool = False) -> None:
    """The run's summary (on stdout; on stderr when stdout carries data, ``export --sync -o -``):
    one line of figures, then gone and failed threads."""
    for line in summary_lines(report):
        result(line, stderr=stderr)


SHOWN_PER_CAUSE = 3  # thread ids named under each failure cause; the rest are counted


def summary_lines(report: RunReport) -> list[str]:
    """``sync run 7: 4/6 threads ok, 1 gone, 1 failed; 12 added, ...; 40 requests in 1.2s``,
    then one line per gone thread and per failure cause ("4,998 threads: HTTP 401")."""
    c = report.counts
    total = len(report.outcomes)
    ok = sum(o.ok for o in report.outcomes)
    gone, failed = report.gone, report.failed
    # Plain numbers on the figures line: scripts (and bench/) read them with `(\d+) added`.
    lines = [
        f"{report.kind} run {report.run_id}: {ok}/{total} threads ok, {len(gone)} gone,"
        f" {len(failed)} failed; {c.added} added, {c.changed} changed,"
        f" {c.deleted} deleted, {c.restored} restored;"
        f" {report.requests} requests in {report.seconds:.1f}s"
    ]
    for o in gone:
        since = "" if o.was_gone else " (new)"
        lines.append(f"  {o.thread_id}: gone{since}: {o.error}")
    causes: dict[str, list[ThreadOutcome]] = {}
    for o in failed:
        causes.setdefault(o.cause or o.result, []).append(o)
    for cause, outcomes in sorted(causes.items(), key=lambda item: -len(item[1])):
        noun = "thread" if len(outcomes) == 1 else "threads"
        lines.append(f"  failed: {len(outcomes):,} {noun}: {cause}")
        for o in outcomes[:SHOWN_PER_CAUSE]:
            lines.append(f"    {o.thread_id}: {o.error}")
        if len(outcomes) > SHOWN_PER_CAUSE:
            lines.append(
                f"    ... and {len(outcomes) - SHOWN_PER_CAUSE:,} more (threadsync status)"
            )
    return lines


@command
def status(
    ctx: typer.Context,
    as_json: Annotated[
        bool,
        typer.Option("--json", envvar="THREADSYNC_STATUS__JSON", help="One JSON object per line."),
    ] = False,
    lag_only: Annotated[
        bool,
        typer.Option(
            "--lag",
            envvar="THREADSYNC_STATUS__LAG",
            help="Only the freshness lag: staleness of the threads changed in the last hour.",
        ),
    ] = False,
) -> None:
    """Per thread: messages, last sync, state, last error; then the freshness lag."""
    mirror = globals_of(ctx).mirror(create=False)
    with mirror.read() as session:
        lag = recent_lag(session, utcnow())
    if lag_only:
        if as_json:
            print_json_lines([lag_fields(lag)])
        else:
            out_console.print(describe_lag(lag))
        return
    with mirror.read() as session:
        rows = thread_statuses(session)
        holders = lease_holders(session)  # replicas mode: which replica holds which thread
        replicas = replica_rows(session)
        schedules = thread_schedules(session)
    if as_json:
        print_json_lines(
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
                "held_by": holders.get(r.thread_id),
                "check_interval": schedules.get(r.thread_id, (None, None))[0],
                "last_changed_at": schedules.get(r.thread_id, (None, None))[1],
            }
            for r in rows
        )
        return
    held = ("held by",) if holders else ()
    print_table(
        (
            "thread",
            "state",
            "messages",
            "deleted",
            "last sync",
            "last success",
            "last error",
            *held,
        ),
        (
            (
                r.thread_id,
                r.state if r.initial_done or r.state != "active" else "active (first sync pending)",
                str(r.messages),
                str(r.deleted),
                iso_utc(r.last_sync_at, empty="never"),
                iso_utc(r.last_success_at, empty="never"),
                r.last_error or "",
                *((holders.get(r.thread_id, ""),) if holders else ()),
            )
            for r in rows
        ),
        keys=("thread", "last sync", "last success"),
    )
    for rep in replicas:
        out_console.print(
            f"replica {rep.replica_id}: {rep.threads} threads held, heartbeat"
            f" {iso_utc(rep.heartbeat_at)}{' (draining)' if rep.draining else ''}"
        )
    with mirror.read() as session:
        edits = edit_counts(session)
    out_console.print(
        f"metadata edits: {edits['pending']} pending, {edits['conflicted']} conflicted,"
        f" {edits['failed']} failed"
    )
    out_console.print(describe_lag(lag))
    if not rows:
        notice("no tracked threads; add some with `threadsync threads add THREAD_ID`")
