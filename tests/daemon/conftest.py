"""Fixtures for the daemon tests."""

from __future__ import annotations

import pytest

from worker.logs import configure


@pytest.fixture(autouse=True)
def _log_to_this_tests_stderr() -> None:
    """CLI invocations (CliRunner) point structlog at their own, later closed, stream: re-point it
    at the stderr pytest captures for the current test."""
    configure(level="info", json=True)
