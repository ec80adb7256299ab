"""The root Typer application: global options, then one module per command group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from worker import __version__
from worker.cli.common import Globals, setup_logging
from worker.cli.say import set_quiet
from worker.memory import limit_malloc_arenas, tune_collector

app = typer.Typer(
    rich_markup_mode=None,
    name="threadsync",
    help="Keep a faithful local mirror of Assistants thread messages; export, back up, write back.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"threadsync {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", envvar="THREADSYNC_CONFIG", help="TOML configuration file."),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="THREADSYNC_DATABASE_URL",
            help="The mirror: sqlite:///path.db (default ./threadsync.db) or postgresql://...",
        ),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            "--log-level", envvar="THREADSYNC_LOG__LEVEL", help="debug|info|warning|error"
        ),
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format",
            envvar="THREADSYNC_LOG__FORMAT",
            help="auto (JSON lines unless stderr is a terminal) | json | console",
        ),
    ] = None,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            envvar="THREADSYNC_QUIET",
            help="Only problems: no progress, no summaries, logs from warning up.",
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            envvar="THREADSYNC_VERBOSE",
            help="Everything: logs from debug up (idle threads, empty pushes).",
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """threadsync: mirror, export, back up and write back Assistants thread messages."""
    if quiet and verbose:
        raise typer.BadParameter("--quiet and --verbose contradict each other; pick one")
    implied = "warning" if quiet else "debug" if verbose else None
    g = Globals(
        config=config,
        database_url=database_url,
        log_level=log_level or implied,
        log_format=log_format,
    )
    ctx.obj = g
    set_quiet(quiet)
    setup_logging(g)


def _register() -> None:
    # Imported here so that each command module can import `app` helpers without a cycle.
    from worker.cli import (  # noqa: PLC0415 - see above
        backup,
        daemon,
        db,
        emulator,
        export,
        metadata,
        runs,
        sync,
        threads,
    )

    for module in (threads, sync, runs, export, metadata, daemon, backup, db, emulator):
        module.register(app)


_register()


def main() -> None:
    """Console-script entry point."""
    limit_malloc_arenas()
    tune_collector()
    app()
