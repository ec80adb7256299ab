"""`import`: an export imported into a new mirror exports identically (deleted messages, hostile
text, gzip); importing again changes nothing; a bad line is named and nothing is imported;
imported threads are migratable. The receiving mirror is SQLite and PostgreSQL."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import orjson
import pytest

from worker.errors import ConfigError
from worker.export.jsonl import write_jsonl
from worker.export.source import Selection, iter_rows
from worker.migrate.importing import import_file
from worker.store.db import Mirror
from worker.store.repo import add_threads
from worker.sync.runner import sync_threads
from worker.testing import emulated_client

from .conftest import conversation_of, expected_items, items_in, migrate, new_emulator

pytestmark = pytest.mark.anyio


def export(mirror: Mirror, include_deleted: bool = True) -> bytes:
    out = io.BytesIO()
    write_jsonl(iter_rows(mirror, Selection(include_deleted=include_deleted)), out)
    return out.getvalue()


async def exported_source(tmp_path: Path, nul: bool = False) -> tuple[bytes, list[str]]:
    """A synced mirror with varied, hostile and deleted messages, exported with tombstones."""
    source = new_emulator(seed=2)
    ids = source.seed(seed=8, threads=3, messages=30)
    hostile = ("nul \x00 " if nul else "") + "astral \U0001f9f5 \u202e" + "x" * 5000
    source.append_messages(ids[0], messages=[{"role": "user", "content": hostile}])
    mirror = Mirror(f"sqlite:///{tmp_path / 'a.db'}")
    with mirror.write() as session:
        add_threads(session, ids)
    async with emulated_client(source) as client:
        await sync_threads(client, mirror)
        victim = source.truth()["threads"][ids[1]][3]["id"]
        source.delete_message(ids[1], victim)
        await sync_threads(client, mirror, full=True)
    data = export(mirror)
    mirror.dispose()
    assert b'"_threadsync"' in data  # a tombstoned message is in the file
    return data, ids


async def test_export_import_export_is_identical(mirror: Mirror, tmp_path: Path) -> None:
    data, _ = await exported_source(tmp_path)
    path = tmp_path / "messages.jsonl.gz"
    path.write_bytes(gzip.compress(data))  # gzip accepted
    report = import_file(mirror, path)
    assert report.added == data.count(b"\n")
    assert export(mirror) == data
    assert export(mirror, include_deleted=False) == b"".join(
        line + b"\n" for line in data.splitlines() if b'"_threadsync"' not in line
    )
    again = import_file(mirror, path)  # idempotent
    assert (again.added, again.changed) == (0, 0)
    assert export(mirror) == data


async def test_nul_characters(mirror: Mirror, tmp_path: Path) -> None:
    """Both backends keep them: ``raw`` holds U+0000 as its JSON escape (see the mirror's
    Unicode paragraph in the README), and the export gives the same bytes back."""
    data, _ = await exported_source(tmp_path, nul=True)
    path = tmp_path / "nul.jsonl"
    path.write_bytes(data)
    import_file(mirror, path)
    assert export(mirror) == data


async def test_a_bad_line_is_named_and_nothing_is_imported(mirror: Mirror, tmp_path: Path) -> None:
    data, _ = await exported_source(tmp_path)
    lines = data.splitlines()
    for number, bad, why in (
        (5, b"{not json", "not JSON"),
        (
            7,
            orjson.dumps({"id": "m", "created_at": "x", "role": "user", "content": []}),
            "no integer created_at",
        ),
        (9, orjson.dumps({**orjson.loads(lines[8]), "thread_id": None}), "no thread id"),
        (2, lines[0], "appears twice"),
    ):
        broken = [*lines[: number - 1], bad, *lines[number:]]
        path = tmp_path / "bad.jsonl"
        path.write_bytes(b"\n".join(broken) + b"\n")
        with pytest.raises(ConfigError, match=why) as caught:
            import_file(mirror, path)
        if why != "appears twice":
            assert f"line {number}:" in str(caught.value)
        assert export(mirror) == b""


async def test_thread_field_and_synced_threads(mirror: Mirror, tmp_path: Path) -> None:
    rows = [
        {"id": f"msg_{i}", "object": "thread.message", "created_at": 100 + i // 2,
         "conversation": "legacy-7", "thread_id": None, "role": "user",
         "content": [{"type": "text", "text": {"value": str(i), "annotations": []}}]}
        for i in range(5)
    ]  # fmt: skip
    path = tmp_path / "legacy.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    report = import_file(mirror, path, "conversation")
    assert report.threads == {"legacy-7": 5}
    assert [orjson.loads(line)["id"] for line in export(mirror).splitlines()] == [
        f"msg_{i}" for i in range(5)
    ]
    with mirror.write() as session:
        add_threads(session, ["thread_synced"])
    rows[0]["conversation"] = "thread_synced"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    with pytest.raises(ConfigError, match="thread_synced is mirrored from the server"):
        import_file(mirror, path, "conversation")


async def test_imported_threads_are_migratable(mirror: Mirror, tmp_path: Path) -> None:
    data, ids = await exported_source(tmp_path)
    path = tmp_path / "m.jsonl"
    path.write_bytes(data)
    import_file(mirror, path)
    target = new_emulator()
    report = await migrate(mirror, target)
    assert not report.failed
    for thread_id in ids:
        conversation = conversation_of(mirror, "openai", thread_id)
        assert items_in(target, conversation) == expected_items(mirror, thread_id)
