"""The page reads the sync plans with: what is stored of a page, and what a full walk missed.

On SQLite both come back as one JSON array aggregated by SQLite (one GIL hand-off per read instead
of one per row), or row by row where the linked SQLite has no JSON functions; every form must read
exactly the same rows, whatever the ids hold.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text

from worker.store.db import Mirror
from worker.sync import apply
from worker.sync.apply import Plan, Stored, load_stored, prepare, tombstone, unlisted, write_plan

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
THREAD = "thread_apply"
# Ids a JSON aggregate must escape and decode faithfully.
IDS = [
    'msg_"quoted"',
    "msg_back\\slash",
    "msg_ünïcødé_\U0001d518",
    "msg_tab\tand\nnewline",
    "msg_plain",
]
RANKS = [-(2**62), 0, 7, 2**62, 3]


@pytest.fixture(params=["json", "rows"])
def read_form(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, mirror_url: str
) -> str:
    """How SQLite hands the rows over; PostgreSQL has one form (run once, as "json")."""
    if request.param == "rows":
        if not mirror_url.startswith("sqlite"):
            pytest.skip("the row-by-row form is SQLite's")
        monkeypatch.setattr(apply, "_SQLITE_JSON", False)
    elif not apply._SQLITE_JSON:
        pytest.skip("the linked SQLite has no JSON functions")
    return str(request.param)


def _seed(mirror: Mirror) -> dict[str, str]:
    """The messages of IDS stored (the second one tombstoned); returns their digests."""
    plan = Plan()
    for i, (mid, rank) in enumerate(zip(IDS, RANKS, strict=True)):
        obj = {"id": mid, "created_at": 1_700_000_000 + i, "role": "user", "metadata": {"i": i}}
        plan.inserts.append((prepare(obj, THREAD), rank))
    with mirror.write() as session:
        write_plan(session, THREAD, plan, NOW)
        tombstone(session, [IDS[1]], NOW)
    return {m.id: m.digest for m, _ in plan.inserts}


def test_page_reads_return_every_stored_row_exactly(mirror: Mirror, read_form: str) -> None:
    digests = _seed(mirror)
    with mirror.read() as session:
        stored = load_stored(session, [*IDS, "msg_not_stored"])
        missed = unlisted(session, THREAD, low=None, high=None, seen={IDS[0]})
        window = unlisted(session, THREAD, low=1_700_000_002, high=1_700_000_004, seen=set())
        nothing = unlisted(session, "thread_other", low=None, high=None, seen=set())
        none_stored = load_stored(session, ["msg_not_stored"])

    assert set(stored) == set(IDS), read_form
    for i, mid in enumerate(IDS):
        row = stored[mid]
        assert isinstance(row, Stored)
        assert (row.id, row.created_at, row.rank, row.digest, row.deleted) == (
            mid,
            1_700_000_000 + i,
            RANKS[i],
            digests[mid],
            mid == IDS[1],
        )
    # Live, unlisted, inside the window: the tombstoned and the seen message are not "missed".
    assert sorted(missed) == sorted([IDS[2], IDS[3], IDS[4]])
    assert sorted(window) == sorted([IDS[2], IDS[3]])
    assert nothing == []
    assert none_stored == {}


def test_inserts_split_to_what_sqlite_binds_at_once(tmp_path: Path) -> None:
    """A page is inserted as multi-row statements; where SQLite binds fewer variables than a page
    needs (older builds allow 999), the rows are split, none lost, none doubled."""
    mirror = Mirror(f"sqlite:///{tmp_path / 'mirror.db'}")
    try:
        objs = [
            {"id": f"msg_{i:02d}", "created_at": 1_700_000_000 + i, "role": "user", "metadata": {}}
            for i in range(7)
        ]
        plan = Plan()
        plan.inserts.extend((prepare(obj, THREAD), i) for i, obj in enumerate(objs))
        with mirror.write() as session:
            driver = session.connection().connection.driver_connection
            assert driver is not None
            # Two rows' worth of variables per statement: 7 rows take four statements.
            driver.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 2 * 14 + 5)
            write_plan(session, THREAD, plan, NOW)
        with mirror.read() as session:
            stored = load_stored(session, [str(obj["id"]) for obj in objs])
            raws = dict(session.execute(text("SELECT id, raw FROM message")).all())
    finally:
        mirror.dispose()
    assert sorted(stored) == [obj["id"] for obj in objs]
    assert [stored[str(obj["id"])].rank for obj in objs] == list(range(7))
    assert raws == {obj["id"]: orjson.dumps(obj).decode() for obj in objs}
