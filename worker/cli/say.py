"""Where a command's words go: results on stdout, problems on stderr, never mixed with logs.

Logs are on stderr, as JSON lines whenever stderr is not a terminal; so a human line written to
stderr then would break a ``2>log.jsonl`` file. :func:`notice` therefore speaks through the log
(one ``cli.notice`` record holding the same sentence) when logs are JSON, and as a plain line on a
terminal. :func:`result` is what a command did, on stdout, silenced by ``--quiet``.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import orjson
from rich.console import Console
from rich.markup import escape

from worker import logs

_state = {"quiet": False}
_stdout = Console(highlight=False, soft_wrap=True)
_stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def is_quiet() -> bool:
    return _state["quiet"]


def result(text: str, *, stderr: bool = False) -> None:
    """A line saying what the command did (``stderr=True`` when stdout carries data, e.g.
    ``export -o -``); nothing with ``--quiet``."""
    if _state["quiet"]:
        return
    if stderr:
        notice(text, level="info")
    else:
        _stdout.print(escape(text))


def notice(text: str, *, level: str = "warning", prefix: bool = True) -> None:
    """A problem or caveat for whoever reads stderr: a log record when logs are JSON lines."""
    if level == "info" and _state["quiet"]:
        return
    if logs.is_json():
        # Written here, not through the logger: a notice is for the user, so no log level
        # filters it and it lands on stderr even before logging is set up (a usage error).
        record = {
            "message": logs.scrub(text),
            "event": "cli.notice",
            "level": level,
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        sys.stderr.write(orjson.dumps(record).decode() + "\n")
        sys.stderr.flush()
        return
    label = {"error": "[bold red]error:[/] ", "warning": "[yellow]warning:[/] "}.get(level, "")
    _stderr.print((label if prefix else "") + escape(logs.scrub(text)))
