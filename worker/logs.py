"""Structured logging: one namespaced event name and flat key/value fields per record.

JSON lines when stderr is not a terminal (daemons, cron, CI), a readable console rendering when it
is. Every record passes through :func:`redact` so that a credential that slipped into a field is
replaced before it is rendered.
"""

from __future__ import annotations

import logging
import sys
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


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure(
    *, level: str = "info", json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Set up structlog for the whole process; safe to call more than once."""
    out = stream if stream is not None else sys.stderr
    use_json = (not out.isatty()) if json is None else json
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
            structlog.processors.format_exc_info,
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
