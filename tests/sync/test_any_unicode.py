"""Any Unicode in any string field, on SQLite and PostgreSQL: stored faithfully, exported exactly.

PostgreSQL's text and JSON cannot hold U+0000, and no UTF-8 text holds a lone surrogate (JSON
carries one as an escape, ``\\ud800``). The mirror keeps such messages anyway: the export is the
API object (equal after JSON normalisation), the query columns hold U+FFFD in their place, and a
thread holding one fails nothing, on either backend.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from worker.cli.export import Format, export_rows
from worker.emulator import Emulator, ManualClock
from worker.export.jsonl import write_jsonl, write_sqlite_jsonl
from worker.export.source import Selection, iter_rows
from worker.jsontext import loads
from worker.store.db import Mirror
from worker.store.repo import add_threads, thread_statuses
from worker.sync.runner import sync_threads
from worker.testing import emulated_client

from ..hostile import HOSTILE, hostile_message, hostile_thread, normalised, plant

pytestmark = pytest.mark.anyio


def exported_lines(mirror: Mirror, thread_ids: list[str]) -> list[bytes]:
    """The JSONL export of ``thread_ids``, by the path the CLI takes for this backend."""
    out = io.BytesIO()
    selection = Selection(thread_ids=thread_ids)
    if mirror.is_sqlite:
        with mirror.read() as session:
            write_sqlite_jsonl(session.connection().connection.driver_connection, selection, out)
    write_jsonl(iter_rows(mirror, selection), out)  # the row path, on both backends
    return out.getvalue().splitlines()


def truth_of(emulator: Emulator, thread_ids: list[str]) -> list[str]:
    threads = emulator.truth()["threads"]
    return [normalised(m) for t in thread_ids for m in threads[t]]


async def sync(emulator: Emulator, mirror: Mirror, **kwargs: Any) -> Any:
    async with emulated_client(emulator) as client:
        return await sync_threads(client, mirror, **kwargs)


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(clock=ManualClock(), seed=11)


async def test_hostile_messages_sync_and_export_exactly(emulator: Emulator, mirror: Mirror) -> None:
    """NUL, lone surrogates, astral characters and direction marks in text, annotations,
    metadata keys and values, role and status: the thread syncs beside ordinary ones, exports
    exactly (both export paths), and a reconcile finds nothing changed."""
    ordinary = emulator.seed(seed=2, threads=2, messages=30)
    hostile = hostile_thread(emulator)
    ids = [*ordinary, hostile]
    with mirror.write() as session:
        add_threads(session, ids)
    report = await sync(emulator, mirror)
    assert report.ok, report.failed
    lines = exported_lines(mirror, ids)
    copies = 2 if mirror.is_sqlite else 1
    assert [normalised(loads(line)) for line in lines] == truth_of(emulator, ids) * copies
    with mirror.read() as session:
        assert all(s.last_error is None for s in thread_statuses(session))
    again = await sync(emulator, mirror, full=True)
    assert again.ok, again.failed
    assert again.counts.writes == 0  # the stored bytes are the ones a new listing makes


async def test_query_columns_hold_what_the_database_can(emulator: Emulator, mirror: Mirror) -> None:
    """status holds U+FFFD where the server sent U+0000 or a lone surrogate; the metadata
    column stays a usable JSON object (U+FFFD in place of those on PostgreSQL), so filters on it
    keep working for every row."""
    thread_id = hostile_thread(emulator)
    with mirror.write() as session:
        add_threads(session, [thread_id])
    assert (await sync(emulator, mirror)).ok
    plain = "metadata->>'plain'" if not mirror.is_sqlite else "json_extract(metadata, '$.plain')"
    with mirror.engine.connect() as conn:
        roles = set(conn.execute(text("SELECT role FROM message")).scalars())
        statuses = set(conn.execute(text("SELECT status FROM message")).scalars())
        matched = conn.execute(
            text(f"SELECT count(*) FROM message WHERE {plain} = 'value'")
        ).scalar_one()
        metas: dict[str, Any] = dict(conn.execute(text("SELECT raw, metadata FROM message")).all())
    assert roles == {"user"}
    assert statuses == {"completed", "do\ufffdne\ufffd"}
    assert matched == len(HOSTILE) + 1
    nul = next(meta for raw, meta in metas.items() if '"value":"nul \\u0000 inside"' in raw)
    nul = loads(nul) if isinstance(nul, str) else nul
    held = "nul \x00 inside" if mirror.is_sqlite else "nul \ufffd inside"
    assert nul == {held: held, "plain": "value"}


_SPECIAL = st.sampled_from(["\x00", "\ud800", "\udbff", "\udc00", "\U0001f9f5", "\u200f", "\u202e"])
_TEXT = st.lists(
    st.one_of(_SPECIAL, st.text(st.characters(exclude_categories=()), max_size=8)), max_size=5
).map("".join)


@st.composite
def _messages(draw: st.DrawFn) -> list[dict[str, Any]]:
    texts = draw(st.lists(_TEXT, min_size=1, max_size=4))
    return [
        {
            "text": value,
            "metadata": draw(st.dictionaries(_TEXT, _TEXT, max_size=3)),
            "role": draw(st.sampled_from(["user", "assistant"])),  # the contract's only two
            "extra": draw(_TEXT),
        }
        for value in texts
    ]


@settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(drafts=_messages())
async def test_any_unicode_round_trips_sync_then_export(
    emulator: Emulator, mirror: Mirror, drafts: list[dict[str, Any]]
) -> None:
    """Arbitrary Unicode (surrogates included) in every string field of served messages: after a
    sync, the export equals what the server serves, after JSON normalisation."""
    thread_id = emulator.create_thread()["id"]
    now = int(emulator.now())
    plant(
        emulator,
        thread_id,
        [
            hostile_message(
                emulator,
                thread_id,
                now,
                d["text"],
                metadata=d["metadata"],
                role=d["role"],
                unknown_field=d["extra"],
            )
            for d in drafts
        ],
    )
    with mirror.write() as session:
        add_threads(session, [thread_id])
    report = await sync(emulator, mirror, thread_ids=[thread_id])
    assert report.ok, report.failed
    lines = exported_lines(mirror, [thread_id])
    copies = 2 if mirror.is_sqlite else 1
    assert [normalised(loads(line)) for line in lines] == truth_of(emulator, [thread_id]) * copies


async def test_every_export_format_writes_hostile_text(
    emulator: Emulator, mirror: Mirror, tmp_path: Path
) -> None:
    """CSV, Markdown and Parquet (UTF-8 text, which cannot hold a lone surrogate) write the
    hostile thread with U+FFFD in its place; JSONL keeps the escape."""
    pytest.importorskip("pyarrow")
    thread_id = hostile_thread(emulator)
    with mirror.write() as session:
        add_threads(session, [thread_id])
    assert (await sync(emulator, mirror)).ok
    for fmt in Format:
        out = tmp_path / f"out.{fmt.value}"
        assert export_rows(mirror, Selection(), fmt, str(out)) == len(HOSTILE) + 1
    (tmp_path / "out.markdown").read_bytes().decode()  # UTF-8 throughout
    written = (tmp_path / "out.csv").read_bytes().decode()
    assert "astral \U0001f9f5" in written
    assert "lone \ufffd low" in written
    assert b"lone \\udfff low" in (tmp_path / "out.jsonl").read_bytes()
