"""`threadsync status` reports the freshness lag (text, --json per thread, --lag [--json])."""

from __future__ import annotations

from datetime import timedelta

import orjson
from typer.testing import CliRunner

from worker.cli.app import app
from worker.store.db import Mirror
from worker.store.models import TrackedThread, utcnow
from worker.store.repo import add_threads


def _mirror(mirror_url: str) -> None:
    """thread_a changed 10 min ago, checked 40 s ago; thread_b changed 2 h ago (not recent)."""
    mirror = Mirror(mirror_url)
    now = utcnow()
    with mirror.write() as session:
        add_threads(session, ["thread_a", "thread_b"])
    with mirror.write() as session:
        for thread_id, changed_ago, checked_ago in (
            ("thread_a", 600.0, 40.0),
            ("thread_b", 7200.0, 5.0),
        ):
            row = session.get(TrackedThread, thread_id)
            assert row is not None
            row.check_interval = 60.0
            row.last_changed_at = now - timedelta(seconds=changed_ago)
            row.last_checked_at = now - timedelta(seconds=checked_ago)
    mirror.dispose()


def _status(mirror_url: str, *args: str) -> str:
    result = CliRunner().invoke(app, ["--database-url", mirror_url, "status", *args])
    assert result.exit_code == 0, result.output
    return str(result.stdout)


def test_status_prints_the_lag_of_recently_changed_threads(mirror_url: str) -> None:
    _mirror(mirror_url)
    out = _status(mirror_url)
    assert "freshness: 1 thread changed in the last hour" in out
    (line,) = [x for x in out.splitlines() if x.startswith("freshness:")]
    p99 = int(line.split("p99 ")[1].split("s")[0])
    assert 40 <= p99 < 100  # 40 s since the check, plus however long the test took


def test_status_lag_json_is_one_object(mirror_url: str) -> None:
    _mirror(mirror_url)
    (only,) = [orjson.loads(x) for x in _status(mirror_url, "--lag", "--json").splitlines()]
    assert only["recently_changed_threads"] == 1
    assert 40.0 <= only["staleness_p50_seconds"] == only["staleness_p99_seconds"] < 100.0


def test_status_json_rows_carry_the_schedule(mirror_url: str) -> None:
    _mirror(mirror_url)
    rows = [orjson.loads(x) for x in _status(mirror_url, "--json").splitlines()]
    assert [(r["thread_id"], r["check_interval"]) for r in rows] == [
        ("thread_a", 60.0),
        ("thread_b", 60.0),
    ]
    assert all(r["last_changed_at"] for r in rows)
