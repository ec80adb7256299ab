"""What every command shares: global options, settings, the mirror, the client, error handling.

Exit codes: 0 success; 1 the work ran but something failed (a thread did not sync, an edit
failed); 2 bad configuration or arguments (nothing was done); 130 interrupted.
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
from rich.markup import escape

from worker import logs
from worker.client import ApiClient
from worker.client.api import ClientEvents
from worker.config import Settings, load_settings
from worker.errors import ConfigError, ThreadsyncError
from worker.store.db import Mirror

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
        return self._settings

    def mirror(self, *, create: bool = True) -> Mirror:
        return Mirror(self.settings().database_url, create=create)


def globals_of(ctx: typer.Context) -> Globals:
    obj = ctx.find_root().obj
    if not isinstance(obj, Globals):
        obj = Globals()
        ctx.find_root().obj = obj
    return obj


def setup_logging(g: Globals) -> None:
    level = g.log_level or "info"
    fmt = g.log_format or "auto"
    logs.configure(level=level, json=None if fmt == "auto" else fmt == "json")


@asynccontextmanager
async def api_client(settings: Settings, events: ClientEvents | None = None) -> Any:
    async with ApiClient(settings.api, settings.retry, events=events) as client:
        yield client


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    return anyio.run(fn)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn the project's errors into one clear line on stderr and an exit code."""
    try:
        yield
    except ConfigError as exc:
        err_console.print(f"[bold red]error:[/] {escape(logs.scrub(str(exc)))}")
        raise typer.Exit(EXIT_CONFIG) from None
    except ThreadsyncError as exc:
        err_console.print(f"[bold red]error:[/] {escape(logs.scrub(str(exc)))}")
        raise typer.Exit(EXIT_FAILED) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None


def command(fn: Callable[P, T]) -> Callable[P, T]:
    """Decorate a command body so errors are reported uniformly."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with reported_errors():
            return fn(*args, **kwargs)

    return wrapper


def fail(message: str, code: int = EXIT_CONFIG) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


def is_tty() -> bool:
    return sys.stderr.isatty()
