"""The root Typer application: global options, then one module per command group."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

import worker.cli as cli_package
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
from worker.cli.variables import check_variables, unknown_variables
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


# The module that registers each command. The console entry point loads only the one the command
# line names: the others' imports cost every start, and a daemon's start-up competes with the
# sync for the CPU (twice when two replicas start together; bench_replicas).
COMMANDS: dict[str, str] = {
    "threads": "threads",
    "sync": "sync",
    "status": "sync",
    "runs": "runs",
    "export": "export",
    "metadata": "metadata",
    "push": "metadata",
    "run": "daemon",
    "check": "daemon",
    "backup": "backup",
    "restore": "backup",
    "db": "db",
    "doctor": "doctor",
    "emulator": "emulator",
    "migrate": "migrate",
    "import": "importer",
}
# Registration order: the order `threadsync --help` lists the commands in.
MODULES = (
    "threads",
    "sync",
    "runs",
    "export",
    "metadata",
    "daemon",
    "backup",
    "db",
    "doctor",
    "emulator",
    "migrate",
    "importer",
)
# The root options that take a value (the next argument, unless given as --name=value).
VALUED_OPTIONS = frozenset({"--config", "-c", "--database-url", "--log-level", "--log-format"})
_registered: set[str] = set()


def command_module(args: list[str]) -> str | None:
    """The module registering the command ``args`` name; None when they name none that is
    certain (help, --version, a typo, clustered short options): then every module loads."""
    value_next = False
    for arg in args:
        if value_next:
            value_next = False
        elif arg in ("-h", "--help", "--version", "--"):
            return None
        elif arg.startswith("--"):
            value_next = arg in VALUED_OPTIONS
        elif arg.startswith("-"):
            if len(arg) > 2:  # -qc FILE or -cFILE: not worth parsing here
                return None
            value_next = arg in VALUED_OPTIONS
        else:
            return COMMANDS.get(arg)
    return None


def register(modules: tuple[str, ...] = MODULES) -> None:
    """Add the commands of ``modules`` to the root application (each module once)."""
    for name in modules:
        if name not in _registered:
            _registered.add(name)
            importlib.import_module(f"worker.cli.{name}").register(app)


def register_for(args: list[str]) -> None:
    """The console entry's registration: the one module ``args`` needs, or all of them. All of
    them too when a ``THREADSYNC_*`` variable is unknown to that module's commands: it may be
    another command's option (a variable nothing reads is refused, see variables.py)."""
    only = command_module(args)
    if only is None:
        register()
        return
    register((only,))
    if unknown_variables(typer.main.get_command(app)):
        register()


if not cli_package.lazy:  # imported by code or tests: every command, as always
    register()


def main() -> None:
    """Console-script entry point (worker.cli.main)."""
    limit_malloc_arenas()
    tune_collector()
    try:
        register_for(sys.argv[1:])
        app()
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # the one top-level handler: one line, never a traceback
        sys.exit(report_error(exc))
