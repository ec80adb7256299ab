"""Export tests: the anyio backend."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from worker import logs


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _logging_after_cli() -> Iterator[None]:
    """CliRunner swaps stderr and the CLI configures logging onto it; put it back afterwards."""
    yield
    logs.configure(level="info", stream=sys.stderr)
