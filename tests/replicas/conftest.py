"""Fixtures shared by the replicas tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from worker.store.db import Mirror


@pytest.fixture
def pg(pg_url: str) -> Iterator[Mirror]:
    """A mirror on a new, empty PostgreSQL schema (replicas mode runs on PostgreSQL only)."""
    mirror = Mirror(pg_url)
    yield mirror
    mirror.dispose()
