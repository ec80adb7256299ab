"""The `threadsync` command line (Typer). Each command group lives in its own module here."""

from __future__ import annotations

from worker.cli.app import app, main

__all__ = ["app", "main"]
