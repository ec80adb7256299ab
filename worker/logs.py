"""Structured logging: one namespaced event name and flat key/value fields per record.

JSON lines when stderr is not a terminal (daemons, cron, CI), a readable console rendering when it
is. Every record passes through :func:`redact` so that a credential that slipped into a field is
replaced before it is rendered.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog

_SECRETS: set[str] = set()
_SECRET_FIELDS = frozenset({"api_key", "token", "authorization", "api-key", "password", "secret"})


def register_secret(value: str | None) -> None:
    """Remember a credential so that no log record can ever print it."""
    if value and len(value) >= 4:
        _SECRETS.add(value)


def forget_secret(value: str) -> None:
    """Stop scrubbing a credential that was replaced (an hourly token must not pile up)."""
    _SECRETS.discard(value)


def scrub(text: str) -> str:
    """Replace every registered credential inside ``text``."""
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: blank credential-named fields and scrub registered secrets."""
    for key, value in list(event_dict.items()):
        if key.lower() in _SECRET_FIELDS:
            event_dict[key] = "***"
        elif isinstance(value, str) and _SECRETS:
            event_dict[key] = scrub(value)
    return event_dict


# What an exception's text may carry that must never be shown: the SQL and parameters
# SQLAlchemy appends, a PostgreSQL DETAIL (a failing row), JSON objects and arrays, and long
# quoted strings (a message's text, a value read from the service).
_AFTER_FIRST_LINE = re.compile(r"\n.*", re.DOTALL)
_SQL_TAIL = re.compile(r"\s*\[(SQL|parameters|SQL parameters hidden)[:\s].*", re.DOTALL)
_STRUCTURED = re.compile(r"\{.*\}|\[.*\]", re.DOTALL)
_LONG_QUOTED = re.compile(r"'[^']{48,}'|\"[^\"]{48,}\"")  # longer than any id
_MAX_MESSAGE = 300


def redact_message(exc: BaseException) -> str:
    """An exception's text fit for a log or a terminal: first line only, no SQL parameters, no
    structured data or long quoted strings (message content), no registered secret."""
    text = _SQL_TAIL.sub("", str(exc))
    text = _AFTER_FIRST_LINE.sub("", text.strip())
    text = _STRUCTURED.sub("<redacted>", text)
    text = _LONG_QUOTED.sub("<redacted>", text)
    if len(text) > _MAX_MESSAGE:
        text = text[:_MAX_MESSAGE] + "..."
    return scrub(text)


def describe_exception(exc: BaseException) -> str:
    """``Type: redacted message`` (just the type when the message is empty)."""
    message = redact_message(exc)
    name = type(exc).__qualname__
    return f"{name}: {message}" if message else name


def _chain(exc: BaseException) -> list[tuple[BaseException, str | None]]:
    """The exception and those it was raised from or during, oldest first, with the joint."""
    chain: list[tuple[BaseException, str | None]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    joint: str | None = None
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, joint))
        if current.__cause__ is not None:
            current, joint = current.__cause__, "The above exception was the direct cause of:"
        elif current.__context__ is not None and not current.__suppress_context__:
            current, joint = current.__context__, "During handling of the above exception:"
        else:
            current = None
    return chain[::-1]


def redacted_traceback(exc: BaseException) -> str:
    """A traceback whose frames are as usual and whose exception texts are redacted."""
    lines: list[str] = []
    chain = _chain(exc)
    for position, (link, joint) in enumerate(chain):
        lines.append("Traceback (most recent call last):\n")
        lines.extend(traceback.format_tb(link.__traceback__))
        lines.append(describe_exception(link) + "\n")
        if isinstance(link, BaseExceptionGroup):
            for inner in link.exceptions:
                lines.append("  | " + describe_exception(inner) + "\n")
        if position + 1 < len(chain):
            lines.append(f"\n{joint}\n\n")
    return "".join(lines)


def format_exc_info(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: ``exc_info`` rendered by :func:`redacted_traceback`."""
    exc_info = event_dict.pop("exc_info", None)
    if not exc_info:
        return event_dict
    if isinstance(exc_info, BaseException):
        exc: BaseException | None = exc_info
    elif isinstance(exc_info, tuple):
        exc = exc_info[1]
    else:
        exc = sys.exc_info()[1]
    if exc is not None:
        event_dict["exception"] = redacted_traceback(exc)
    return event_dict


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


class _Stderr:
    """Whatever ``sys.stderr`` is when a record is written, not when logging was set up: a
    progress display that redirects stderr then prints log lines above itself, not through it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


_json_logs = True


def is_json() -> bool:
    """Whether records are JSON lines (then every line on stderr must be one: see the CLI)."""
    return _json_logs


def configure(
    *, level: str = "info", json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Set up structlog for the whole process; safe to call more than once."""
    global _json_logs  # noqa: PLW0603 - one logging set-up per process, like structlog's own
    out: Any = stream if stream is not None else _Stderr()
    use_json = (not out.isatty()) if json is None else json
    _json_logs = use_json
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            format_exc_info,  # ours: exception texts may hold message content or SQL parameters
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(**initial: Any) -> Any:
    """A bound structlog logger; event names are namespaced, e.g. ``sync.page``."""
    return structlog.get_logger(**initial)
