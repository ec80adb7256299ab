"""`threadsync export` end to end on a synced mirror (SQLite and PostgreSQL): formats, filters,
directory output, compression, deleted messages."""

from __future__ import annotations

import csv
import gzip
import io
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from worker.cli.app import app
from worker.cli.export import parse_when
from worker.emulator import Emulator, ManualClock
from worker.errors import ConfigError
from worker.export.jsonl import write_jsonl, write_sqlite_jsonl
from worker.export.source import Selection, iter_rows
from worker.export.text import plain_text
from worker.store.db import Mirror
from worker.store.repo import add_threads
from worker.sync.runner import sync_threads
from worker.testing import emulated_client

pytestmark = pytest.mark.anyio


@pytest.fixture
async def synced(mirror: Mirror, mirror_url: str) -> tuple[Emulator, list[str], str]:
    emulator = Emulator(clock=ManualClock(), seed=5)
    ids = emulator.seed(seed=11, threads=2, messages=40)
    with mirror.write() as session:
        add_threads(session, ids)
    doomed = emulator.truth()["threads"][ids[0]][3]["id"]
    async with emulated_client(emulator) as client:
        await sync_threads(client, mirror)
        emulator.delete_message(ids[0], doomed)
        report = await sync_threads(client, mirror, full=True)
    assert report.ok
    return emulator, ids, mirror_url


def run(url: str, *args: str) -> Any:
    result = CliRunner().invoke(app, ["--database-url", url, "export", *args])
    assert result.exit_code == 0, result.output
    return result


def truth(emulator: Emulator, ids: list[str]) -> list[dict[str, Any]]:
    return [m for t in ids for m in emulator.truth()["threads"][t]]


async def test_jsonl_file_equals_the_truth_and_gz_by_name(
    synced: tuple[Emulator, list[str], str], tmp_path: Path
) -> None:
    """Default JSONL is the live API objects in order; a .gz name compresses the same bytes."""
    emulator, ids, url = synced
    run(url, "-o", str(tmp_path / "all.jsonl"))
    run(url, "-o", str(tmp_path / "all.jsonl.gz"))
    plain = (tmp_path / "all.jsonl").read_bytes()
    assert [orjson.loads(line) for line in plain.splitlines()] == truth(emulator, ids)
    assert gzip.decompress((tmp_path / "all.jsonl.gz").read_bytes()) == plain


async def test_filters_select_by_role_time_and_thread(
    synced: tuple[Emulator, list[str], str], tmp_path: Path
) -> None:
    """--role, --since/--until (half-open) and --thread narrow the export exactly."""
    emulator, ids, url = synced
    messages = truth(emulator, [ids[1]])
    lo, hi = messages[5]["created_at"], messages[20]["created_at"]
    out = tmp_path / "f.jsonl"
    run(url, "-o", str(out), "-t", ids[1], "--role", "assistant",
        "--since", str(lo), "--until", str(hi))  # fmt: skip
    got = [orjson.loads(line)["id"] for line in out.read_bytes().splitlines()]
    want = [m["id"] for m in messages if m["role"] == "assistant" and lo <= m["created_at"] < hi]
    assert got == want
    assert got


async def test_directory_output_writes_one_file_per_thread(
    synced: tuple[Emulator, list[str], str], tmp_path: Path
) -> None:
    """A target ending in / gets <thread>.md per thread; --gzip compresses each."""
    _, ids, url = synced
    run(url, "-f", "markdown", "--gzip", "-o", f"{tmp_path / 'md'}/")
    files = sorted(p.name for p in (tmp_path / "md").iterdir())
    assert files == sorted(f"{t}.md.gz" for t in ids)
    text = gzip.decompress((tmp_path / "md" / f"{ids[0]}.md.gz").read_bytes()).decode()
    assert text.startswith(f"# Thread {ids[0]}\n")


async def test_deleted_messages_only_with_include_deleted(
    synced: tuple[Emulator, list[str], str], tmp_path: Path
) -> None:
    """A deleted message is absent by default; with --include-deleted CSV fills deleted_at."""
    _, ids, url = synced
    run(url, "-f", "csv", "-t", ids[0], "-o", str(tmp_path / "live.csv"))
    run(url, "-f", "csv", "-t", ids[0], "--include-deleted", "-o", str(tmp_path / "all.csv"))
    live = list(csv.DictReader(io.StringIO((tmp_path / "live.csv").read_text(), newline="")))
    every = list(csv.DictReader(io.StringIO((tmp_path / "all.csv").read_text(), newline="")))
    assert len(every) == len(live) + 1
    deleted = [r for r in every if r["deleted_at"]]
    assert len(deleted) == 1
    assert deleted[0]["message_id"] not in {r["message_id"] for r in live}


def test_parse_when_accepts_dates_times_and_seconds() -> None:
    """Dates and offset-less times are UTC; garbage is a configuration error."""
    assert parse_when("1700000000", "--since") == 1_700_000_000
    assert parse_when("2023-11-14T22:13:20Z", "--since") == 1_700_000_000
    assert parse_when("2023-11-14T23:13:20+01:00", "--since") == 1_700_000_000
    assert parse_when("2023-11-14", "--since") == 1_699_920_000
    with pytest.raises(ConfigError):
        parse_when("yesterday", "--since")


def test_parquet_without_pyarrow_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--format parquet is optional: without pyarrow it fails with exit 2 and the install hint."""
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    url = f"sqlite:///{tmp_path / 'm.db'}"
    Mirror(url).dispose()  # export only reads: it needs a mirror to exist
    result = CliRunner().invoke(
        app, ["--database-url", url, "export", "-f", "parquet", "-o", str(tmp_path / "x.parquet")]
    )
    assert result.exit_code == 2
    assert "pip install pyarrow" in result.output
    assert not (tmp_path / "x.parquet").exists()


async def test_parquet_holds_every_message_typed_in_order(
    synced: tuple[Emulator, list[str], str], tmp_path: Path
) -> None:
    """The parquet extra: one row per message in export order, the CSV columns typed, ``raw`` the
    API object; ``--include-deleted`` adds the tombstoned message with its ``deleted_at``."""
    pq = pytest.importorskip("pyarrow.parquet")
    emulator, ids, url = synced
    run(url, "-f", "parquet", "-o", str(tmp_path / "live.parquet"))
    run(url, "-f", "parquet", "--include-deleted", "-o", str(tmp_path / "all.parquet"))
    live = pq.read_table(tmp_path / "live.parquet").to_pylist()
    expected = truth(emulator, ids)
    assert [r["message_id"] for r in live] == [m["id"] for m in expected]
    for row, message in zip(live, expected, strict=True):
        assert orjson.loads(row["raw"]) == message
        assert row["thread_id"] == message["thread_id"]
        assert row["role"] == message["role"]
        assert row["created_at"] == datetime.fromtimestamp(message["created_at"], UTC)
        assert row["text"] == plain_text(message)
        assert row["attachments"] == len(message.get("attachments") or [])
        assert orjson.loads(row["metadata"]) == (message.get("metadata") or {})
        assert row["deleted_at"] is None
    everything = pq.read_table(tmp_path / "all.parquet").to_pylist()
    gone = [r for r in everything if r["deleted_at"] is not None]
    assert len(everything) == len(live) + 1
    assert len(gone) == 1
    assert gone[0]["message_id"] not in {m["id"] for m in expected}
    assert gone[0]["thread_id"] == ids[0]


@pytest.mark.parametrize("include_deleted", [False, True])
@pytest.mark.parametrize("roles", [None, ["assistant"]])
async def test_sqlite_fast_jsonl_equals_the_row_path(
    synced: tuple[Emulator, list[str], str],
    mirror: Mirror,
    include_deleted: bool,
    roles: list[str] | None,
) -> None:
    """The byte-level JSONL path (scripts, SQLite) writes exactly what the row path writes,
    deleted messages and their marker included."""
    if not mirror.is_sqlite:
        pytest.skip("the fast path is SQLite's")
    selection = Selection(include_deleted=include_deleted, roles=roles)
    slow, fast = io.BytesIO(), io.BytesIO()
    written = write_jsonl(iter_rows(mirror, selection), slow)
    with mirror.read() as session:
        conn = session.connection().connection.driver_connection
        assert write_sqlite_jsonl(conn, selection, fast) == written
    assert fast.getvalue() == slow.getvalue()
    assert written == len(slow.getvalue().splitlines()) > 0
    assert (b'"_threadsync"' in fast.getvalue()) is include_deleted


async def test_messages_of_threads_no_longer_tracked_are_exported_after_the_tracked(
    synced: tuple[Emulator, list[str], str], mirror: Mirror
) -> None:
    """A thread whose tracking row is gone keeps its messages in every export, after the tracked
    threads, on the byte path and the row path alike."""
    emulator, ids, _ = synced
    with mirror.write() as session:
        session.execute(text("DELETE FROM sync_state WHERE thread_id = :t"), {"t": ids[0]})
        session.execute(text("DELETE FROM tracked_thread WHERE thread_id = :t"), {"t": ids[0]})
    rows = list(iter_rows(mirror, Selection()))
    assert [r.thread_id for r in rows] == sorted(
        [r.thread_id for r in rows], key=lambda t: t == ids[0]
    )
    assert [orjson.loads(r.raw) for r in rows] == truth(emulator, [ids[1], ids[0]])
    if mirror.is_sqlite:
        fast = io.BytesIO()
        with mirror.read() as session:
            conn = session.connection().connection.driver_connection
            write_sqlite_jsonl(conn, Selection(), fast)
        assert [orjson.loads(line) for line in fast.getvalue().splitlines()] == truth(
            emulator, [ids[1], ids[0]]
        )
