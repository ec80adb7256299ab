"""What every command shares: global options, settings, the mirror, the client, error handling.

Exit codes: 0 success; 1 the work ran but something failed (a thread did not sync, an edit
failed); 2 bad configuration or arguments (nothing was done); 130 interrupted.

Every failure is one line on stderr. Anything unexpected (a bug) is one line too, and exit 1; its
traceback, with exception texts redacted (they may quote message content), only with ``--debug``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import anyio
import typer
from rich.console import Console

from worker import logs
from worker.cli.say import notice
from worker.client import ApiClient
from worker.client.api import ClientEvents
from worker.config import Settings, load_settings
from worker.errors import ConfigError, ThreadsyncError
from worker.store.db import Mirror, translate_store_error

P = ParamSpec("P")
T = TypeVar("T")

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
out_console = Console(highlight=False, soft_wrap=True)


@dataclass
class Globals:
    """Options given before the command name, kept on the Typer context."""

    config: Path | None = None
    database_url: str | None = None
    log_level: str | None = None
    log_format: str | None = None
    debug: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    _settings: Settings | None = None

    def settings(self, **more: Any) -> Settings:
        if self._settings is None or more:
            cli: dict[str, Any] = dict(self.overrides)
            if self.database_url:
                cli["database_url"] = self.database_url
            for key, value in more.items():
                if isinstance(value, dict):
                    cli[key] = {
                        **cli.get(key, {}),
                        **{k: v for k, v in value.items() if v is not None},
                    }
                elif value is not None:
                    cli[key] = value
            settings = load_settings(self.config, **cli)
            if more:
                return settings
            self._settings = settings
            # The config file's [log] applies too (options and variables were applied already).
            setup_logging(self, settings)
        return self._settings

    def mirror(self, *, create: bool = True) -> Mirror:
        """The mirror; ``create=False`` for commands that need one already (they never make one:
        a mistyped URL must not leave an empty mirror behind)."""
        return Mirror(self.settings().database_url, create=create)


def globals_of(ctx: typer.Context) -> Globals:
    obj = ctx.find_root().obj
    if not isinstance(obj, Globals):
        obj = Globals()
        ctx.find_root().obj = obj
    return obj


_debug = {"on": False}  # whether the level is debug; set by setup_logging


def setup_logging(g: Globals, settings: Settings | None = None) -> None:
    """Logging from --debug, then the options (and their variables), then the settings."""
    level = "debug" if g.debug else (g.log_level or (settings.log.level if settings else "info"))
    _debug["on"] = level.lower() == "debug"
    fmt = g.log_format or (settings.log.format if settings else "auto")
    logs.configure(level=level, json=None if fmt == "auto" else fmt == "json")


@asynccontextmanager
async def api_client(settings: Settings, events: ClientEvents | None = None) -> Any:
    async with ApiClient(settings.api, settings.retry, events=events) as client:
        yield client


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    return anyio.run(fn)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn every error into one clear line on stderr and an exit code."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise  # exits and usage errors: Typer reports them itself
    except KeyboardInterrupt:
        notice("interrupted", level="error", prefix=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        raise typer.Exit(report_error(exc)) from None


def _known(exc: BaseException) -> ThreadsyncError | None:
    """The project's error behind ``exc``: itself, one inside a task group's exception group, or
    a database failure translated at this boundary."""
    if isinstance(exc, ThreadsyncError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _known(inner)
            if found is not None:
                return found
    return translate_store_error(exc)


def report_error(exc: BaseException) -> int:
    """Print ``exc`` as one line (and, with --debug, its redacted traceback); its exit code."""
    known = _known(exc)
    if _debug["on"]:
        if logs.is_json():
            logs.get_logger().debug("cli.traceback", traceback=logs.redacted_traceback(exc))
        else:
            err_console.out(logs.redacted_traceback(exc), highlight=False, end="")
    if known is not None:
        notice(str(known), level="error")
        return EXIT_CONFIG if isinstance(known, ConfigError) else EXIT_FAILED
    if isinstance(exc, OSError) and exc.strerror:
        # The file system said no (a path, a permission, a full disk): the user's to fix.
        where = f": {exc.filename}" if exc.filename else ""
        notice(f"{exc.strerror}{where}", level="error")
        return EXIT_FAILED
    hint = "" if _debug["on"] else "; run again with --debug for the traceback"
    notice(f"unexpected {logs.describe_exception(exc)}{hint}; please report it", level="error")
    return EXIT_FAILED


def command(fn: Callable[P, T]) -> Callable[P, T]:
    """Decorate a command body so errors are reported uniformly."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with reported_errors():
            return fn(*args, **kwargs)

    return wrapper


def fail(message: str, code: int = EXIT_CONFIG) -> typer.Exit:
    notice(message, level="error")
    return typer.Exit(code)


def is_tty() -> bool:
    return sys.stderr.isatty()
