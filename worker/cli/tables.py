"""Listings people and scripts can both read: whole ids and times, one time format, JSON lines.

A table on a terminal wraps its free-text columns and never its key columns (ids, times), so an id
can always be copied whole; off a terminal nothing is cut or wrapped at all. Every time is ISO 8601
in UTC with a ``Z`` (``2026-12-06T08:30:00Z``), in tables and in ``--json`` alike.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from worker.cli.common import out_console

# Off a terminal a row is as long as its values: no width to fit, nothing folded.
_UNBOUNDED = 1_000_000
_JSON_TIMES = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z | orjson.OPT_OMIT_MICROSECONDS


def iso_utc(value: datetime | None, *, empty: str = "") -> str:
    """``2026-12-06T08:30:00Z``; naive values are UTC (how the mirror stores them)."""
    if value is None:
        return empty
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def print_table(
    columns: Sequence[str], rows: Iterable[Sequence[str]], *, keys: Iterable[str] = ()
) -> None:
    """Columns named in ``keys`` (ids, times) are never wrapped or cut; the others wrap."""
    whole = set(keys)
    console = _console()
    body = [list(row) for row in rows]
    # Off a terminal: no rules or borders, so `awk`, `cut -c` and eyes all read it.
    table = Table() if console is out_console else Table(box=None, pad_edge=False)
    needed = 1
    for i, name in enumerate(columns):
        widest = max((len(row[i]) for row in body), default=0)
        if name in whole:
            width = max(widest, len(name))
            table.add_column(name, no_wrap=True, overflow="ignore", min_width=width)
            needed += width + 3
        else:
            table.add_column(name, overflow="fold")
            needed += min(widest, 4) + 3
    for row in body:
        table.add_row(*row)
    # Other columns wrap first; when even the key columns cannot fit, the table is drawn wider
    # than the terminal (which wraps the line) rather than cut an id.
    console.print(table, width=max(console.width, needed))


def _console() -> Console:
    if out_console.is_terminal:
        return out_console
    return Console(
        file=sys.stdout, width=_UNBOUNDED, highlight=False, soft_wrap=True, color_system=None
    )


def print_json_lines(records: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object per line on stdout; datetimes as ISO 8601 UTC with ``Z``."""
    for record in records:
        out_console.out(orjson.dumps(record, option=_JSON_TIMES).decode(), highlight=False)
