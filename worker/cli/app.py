"""The root Typer application: global options, then one module per command group."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from worker import __version__
from worker.cli.common import (
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    Globals,
    report_error,
    reported_errors,
    setup_logging,
)
from worker.cli.say import notice, set_quiet
from worker.cli.variables import check_variables
from worker.memory import limit_malloc_arenas, tune_collector


@contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    """A usage error (unknown option, bad value, missing argument) as one line and exit 2,
    instead of Typer's framed panel."""
    try:
        yield
    except typer.TyperException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help itself: Typer prints it
            raise
        ctx = getattr(exc, "ctx", None)
        hint = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        message = message.rstrip(".")
        notice(f"{message}{hint}", level="error")
        raise typer.Exit(getattr(exc, "exit_code", EXIT_CONFIG)) from None


class _Root(TyperGroup):
    """The root command: usage errors anywhere below it are reported by the handler above."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: Any = None,
        **extra: Any,
    ) -> Any:
        with _one_line_usage_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        with _one_line_usage_errors():
            return super().invoke(ctx)


app = typer.Typer(
    rich_markup_mode=None,
    cls=_Root,
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
            "--log-level",
            envvar=["THREADSYNC_LOG__LEVEL", "THREADSYNC_LOG_LEVEL"],
            help="debug|info|warning|error",
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
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar="THREADSYNC_DEBUG",
            help="Log at debug level and print the traceback (message content redacted) of an"
            " unexpected error.",
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
        debug=debug,
    )
    ctx.obj = g
    set_quiet(quiet)
    with reported_errors():
        setup_logging(g)
        check_variables(ctx.command)


def _register() -> None:
    # Imported here so that each command module can import `app` helpers without a cycle.
    from worker.cli import (  # noqa: PLC0415 - see above
        backup,
        daemon,
        db,
        doctor,
        emulator,
        export,
        importer,
        metadata,
        migrate,
        runs,
        sync,
        threads,
    )

    for module in (
        threads,
        sync,
        runs,
        export,
        metadata,
        daemon,
        backup,
        db,
        doctor,
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
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # the one top-level handler: one line, never a traceback
        sys.exit(report_error(exc))
