"""The export's progress bar: counts and an ETA on a terminal, and not a byte otherwise; the
items pass through unchanged either way."""

from __future__ import annotations

import io

from rich.console import Console

from worker.export.progress import with_progress


def _console(*, terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=120, color_system=None), out


def test_terminal_shows_counts_and_eta() -> None:
    console, out = _console(terminal=True)
    items = list(range(2500))
    assert list(with_progress(items, total=len(items), console=console)) == items
    shown = out.getvalue()
    assert "exporting" in shown
    assert "2500/2500 messages" in shown
    assert "ETA" in shown


def test_not_a_terminal_is_silent_and_lazy() -> None:
    console, out = _console(terminal=False)
    items = iter(range(10))
    passed = with_progress(items, total=None, console=console)
    assert passed is items  # handed back as is: no wrapper, no bar
    assert list(passed) == list(range(10))
    assert out.getvalue() == ""
