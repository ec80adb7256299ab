"""The `threadsync` command line (Typer). Each command group lives in its own module here."""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130


def main() -> None:
    """Console-script entry point. The command modules load here, not at import, so that a
    Ctrl-C while they load (a second on a busy machine) is a quiet exit 130 too."""
    try:
        from worker.cli.app import main as run  # noqa: PLC0415 - see above
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    run()


__all__ = ["main"]
