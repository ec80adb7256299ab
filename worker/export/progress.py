"""A rich progress bar (counts, rate, ETA) on stderr when it is a terminal; silence otherwise."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def with_progress(
    items: Iterable[T], *, total: int | None, console: Console, label: str = "exporting"
) -> Iterable[T]:
    """``items`` unchanged: as they are when ``console`` is not a terminal, else through a bar
    advanced every 1000 items (cheap at 1M rows)."""
    if not console.is_terminal:
        return items
    return _with_bar(items, total=total, console=console, label=label)


def _with_bar(
    items: Iterable[T], *, total: int | None, console: Console, label: str
) -> Iterator[T]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("messages"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label, total=total)
        pending = 0
        for item in items:
            yield item
            pending += 1
            if pending == 1000:
                progress.advance(task, pending)
                pending = 0
        progress.advance(task, pending)
