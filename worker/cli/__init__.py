"""The `threadsync` command line (Typer). Each command group lives in its own module here."""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130
# Set by the entry point before worker.cli.app loads: it then registers only the command the
# command line names (worker.cli.app.register_for) instead of every command at import.
lazy = False


def main() -> None:
    """Console-script entry point. The command modules load here, not at import, so that a
    Ctrl-C while they load (a second on a busy machine) is a quiet exit 130 too."""
    global lazy  # noqa: PLW0603 - one switch, set once per process by its entry point
    lazy = True
    try:
        from worker.cli.app import main as run  # noqa: PLC0415 - see above
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    run()


__all__ = ["main"]
