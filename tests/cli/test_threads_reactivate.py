"""`threadsync threads add` on a thread marked gone tracks it again (SQLite and PostgreSQL)."""

from __future__ import annotations

from typer.testing import CliRunner

from worker import logs
from worker.cli.app import app
from worker.store.db import Mirror
from worker.store.models import TrackedThread, utcnow
from worker.store.repo import add_threads


def test_threads_add_reactivates_a_gone_thread(mirror: Mirror) -> None:
    with mirror.write() as session:
        add_threads(session, ["thread_gone", "thread_live"])
        row = session.get(TrackedThread, "thread_gone")
        assert row is not None
        row.state, row.gone_at = "gone", utcnow()
    result = CliRunner().invoke(
        app, ["--database-url", mirror.safe_url, "threads", "add", "thread_gone", "thread_live"]
    )
    logs.configure()
    assert result.exit_code == 0, result.output
    assert "thread_gone: reactivated (was gone)" in result.output
    assert "thread_live: already tracked" in result.output
    with mirror.read() as session:
        row = session.get(TrackedThread, "thread_gone")
        assert row is not None
        assert (row.state, row.gone_at, row.next_sync_at) == ("active", None, None)
