"""`threadsync run` (the daemon) and `threadsync check` (its health probe).

Exit codes of `run`: 0 stopped by SIGTERM/SIGINT after a graceful shutdown; 1 the shutdown took
longer than ``daemon.shutdown_timeout``; 2 configuration, including "another daemon already runs
on this mirror" (restarting will not help until that one stops); 130 a second signal forced exit.
`check`: 0 the mirror opens, the daemon's heartbeat is fresh and its passes are not stopped by a
configuration error, else 1 with the reason.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import anyio
import typer

from worker.cli.common import command, globals_of, out_console
from worker.cli.say import notice
from worker.daemon.heartbeat import decode, judge, read_beat, read_problem
from worker.errors import ThreadsyncError
from worker.logs import scrub
from worker.store.db import Mirror, normalise_url, sqlite_path

EXIT_UNHEALTHY = 1


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("check")(check)


@command
def run(
    ctx: typer.Context,
    health_port: Annotated[
        int | None,
        typer.Option(
            "--health-port",
            envvar="THREADSYNC_DAEMON__HEALTH_PORT",
            min=0,
            max=65535,
            help="Serve /healthz, /readyz and /metrics on this port (default: no listener).",
        ),
    ] = None,
    health_host: Annotated[
        str | None,
        typer.Option(
            "--health-host",
            envvar="THREADSYNC_DAEMON__HEALTH_HOST",
            help="Interface for the health listener (default 127.0.0.1).",
        ),
    ] = None,
    requests_per_second: Annotated[
        float | None,
        typer.Option(
            "--requests-per-second",
            envvar="THREADSYNC_DAEMON__REQUESTS_PER_SECOND",
            min=0.001,
            help="Client-side request rate shared by every task (default 20).",
        ),
    ] = None,
    dispatch_interval: Annotated[
        float | None,
        typer.Option(
            "--dispatch-interval",
            envvar="THREADSYNC_DAEMON__DISPATCH_INTERVAL",
            min=0.001,
            help="Seconds between looks for due threads (default 5).",
        ),
    ] = None,
    sync_interval: Annotated[
        float | None,
        typer.Option(
            "--sync-interval",
            envvar="THREADSYNC_DAEMON__SYNC_INTERVAL",
            min=0.001,
            help="Seconds between two syncs of one thread (default 300, plus jitter).",
        ),
    ] = None,
) -> None:
    """Keep the mirror current until stopped (SIGTERM/SIGINT: graceful; twice: at once)."""
    g = globals_of(ctx)
    settings = g.settings(
        daemon={
            "health_port": health_port,
            "health_host": health_host,
            "requests_per_second": requests_per_second,
            "dispatch_interval": dispatch_interval,
            "sync_interval": sync_interval,
        }
    )
    # Imported here: the scheduler, uvicorn and prometheus stay out of every other command's start.
    from worker.daemon.lifecycle import run_daemon  # noqa: PLC0415 - see above

    code = anyio.run(run_daemon, settings, backend="asyncio")
    if code:
        raise typer.Exit(code)


@command
def check(ctx: typer.Context) -> None:
    """Exit 0 if the mirror opens and the daemon's heartbeat is fresh, else 1 with the reason."""
    settings = globals_of(ctx).settings()
    try:
        mirror = _open_existing(settings.database_url)
        try:
            value = read_beat(mirror)
            problem = read_problem(mirror)
        finally:
            mirror.dispose()
    except ThreadsyncError as exc:
        notice(f"unhealthy: {scrub(str(exc))}", level="error", prefix=False)
        raise typer.Exit(EXIT_UNHEALTHY) from None
    now = datetime.now(UTC)
    reason = judge(value, now, settings.daemon.heartbeat_interval)
    if reason is None and problem is not None:
        reason = f"the daemon runs but its passes stop on a configuration error: {problem}"
    if reason is not None:
        notice(f"unhealthy: {reason}", level="error", prefix=False)
        raise typer.Exit(EXIT_UNHEALTHY)
    beat = decode(value or "")
    assert beat is not None
    out_console.print(
        f"ok: daemon pid {beat.pid} heartbeat {(now - beat.at).total_seconds():.1f} s old"
    )


def _open_existing(url: str) -> Mirror:
    """Open the mirror without creating anything: a probe must not make an empty database."""
    path = sqlite_path(normalise_url(url))
    if path is not None and not path.exists():
        raise ThreadsyncError(f"no mirror at {path}")
    return Mirror(url, create=False)
