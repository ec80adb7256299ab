"""The root Typer application: global options, then one module per command group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from worker import __version__
from worker.cli.common import Globals, setup_logging
from worker.memory import limit_malloc_arenas, tune_collector

app = typer.Typer(
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
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """threadsync: mirror, export, back up and write back Assistants thread messages."""
    g = Globals(
        config=config, database_url=database_url, log_level=log_level, log_format=log_format
    )
    ctx.obj = g
    setup_logging(g)


def _register() -> None:
    # Imported here so that each command module can import `app` helpers without a cycle.
    from worker.cli import (  # noqa: PLC0415 - see above
        backup,
        daemon,
        db,
        emulator,
        export,
        importer,
        metadata,
        migrate,
        sync,
        threads,
    )

    for module in (
        threads,
        sync,
        export,
        metadata,
        daemon,
        backup,
        db,
        emulator,
        migrate,
        importer,
    ):
        module.register(app)


_register()


def main() -> None:
    """Console-script entry point."""
    limit_malloc_arenas()
    tune_collector()
    app()
