"""Fixtures shared by every test tier: the anyio backend and the mirror backend matrix; the tier
of each test (:mod:`tests.tiers`); the process settings the `threadsync` command runs with.

Every test that takes ``mirror_url`` (or ``mirror``) runs twice: on a fresh SQLite file and in a
fresh schema of the local PostgreSQL server. Without a server the PostgreSQL half is skipped with
the reason shown, except in CI (``THREADSYNC_REQUIRE_POSTGRES=1``) where it fails instead.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests import tiers
from worker import logs
from worker.memory import limit_malloc_arenas, tune_collector
from worker.store.db import Mirror

PG_URL = os.environ.get(
    "THREADSYNC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def pytest_configure(config: pytest.Config) -> None:
    """The collector and malloc settings `threadsync`'s entry point applies (worker/cli/app.py
    ``main``), once, so that tests see the process the CLI runs in."""
    limit_malloc_arenas()
    tune_collector()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tiers.assign(items)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """CliRunner swaps stderr; point structlog back at the real one after every test."""
    yield
    logs.configure(level="info", json=True, stream=sys.stderr)


def _pg_admin_url() -> str:
    return PG_URL.replace("postgresql://", "postgresql+psycopg://", 1)


_pg_state: dict[str, str | None] = {}


def _pg_unavailable() -> str | None:
    if "reason" not in _pg_state:
        try:
            engine = create_engine(_pg_admin_url(), connect_args={"connect_timeout": 3})
            with engine.connect() as conn:
                conn.execute(text("select 1"))
            engine.dispose()
            _pg_state["reason"] = None
        except Exception as exc:
            _pg_state["reason"] = f"no PostgreSQL at {PG_URL}: {type(exc).__name__}"
    return _pg_state["reason"]


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose default schema is new and empty, dropped afterwards."""
    reason = _pg_unavailable()
    if reason is not None:
        if os.environ.get("THREADSYNC_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    schema = f"ts_{uuid.uuid4().hex[:12]}"
    engine = create_engine(_pg_admin_url())
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def mirror_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mirror.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def mirror(mirror_url: str) -> Iterator[Mirror]:
    m = Mirror(mirror_url)
    yield m
    m.dispose()
