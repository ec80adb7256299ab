"""The statements on ``message`` the sync plans and writes with (``worker/store/messages.py``):
what is stored of a page, what a full walk missed, inserts, updates and the census.

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
from sqlmodel import Session

from worker.store import messages, sync_state
from worker.store.db import Mirror
from worker.store.messages import Incoming, Stored, load_stored, tombstone, unlisted
from worker.store.models import SyncState
from worker.store.repo import add_threads
from worker.sync.census import Census, load_census
from worker.sync.plan import Counts, Plan, plan_new, prepare
from worker.sync.writer import write_page

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
        monkeypatch.setattr(messages, "SQLITE_JSON", False)
    elif not messages.SQLITE_JSON:
        pytest.skip("the linked SQLite has no JSON functions")
    return str(request.param)


def _seed(mirror: Mirror) -> dict[str, str]:
    """The messages of IDS stored (the second one tombstoned); returns their digests."""
    plan = Plan()
    for i, (mid, rank) in enumerate(zip(IDS, RANKS, strict=True)):
        obj = {"id": mid, "created_at": 1_700_000_000 + i, "role": "user", "metadata": {"i": i}}
        plan.inserts.append((prepare(obj, THREAD), rank))
    with mirror.write() as session:
        messages.write(session, THREAD, plan.inserts, plan.updates, NOW)
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
            messages.write(session, THREAD, plan.inserts, plan.updates, NOW)
        with mirror.read() as session:
            stored = load_stored(session, [str(obj["id"]) for obj in objs])
            raws = dict(session.execute(text("SELECT id, raw FROM message")).all())
    finally:
        mirror.dispose()
    assert sorted(stored) == [obj["id"] for obj in objs]
    assert [stored[str(obj["id"])].rank for obj in objs] == list(range(7))
    assert raws == {obj["id"]: orjson.dumps(obj).decode() for obj in objs}


def _page(n: int, *, start: int = 0, meta: dict[str, str] | None = None) -> list[Incoming]:
    return [
        prepare(
            {"id": f"msg_new_{i:03d}", "created_at": 1_700_000_000 + i, "role": "user",
             "metadata": meta or {}},
            THREAD,
        )
        for i in range(start, start + n)
    ]  # fmt: skip


def _statements(session: Session) -> list[str]:
    """Every statement SQLite runs on the session's connection from now on."""
    seen: list[str] = []
    driver = session.connection().connection.driver_connection
    assert driver is not None
    driver.set_trace_callback(seen.append)
    return seen


def test_a_new_page_is_inserted_without_reading_first(tmp_path: Path) -> None:
    """A first sync's page goes in as one INSERT: no SELECT of its ids before it."""
    mirror = Mirror(f"sqlite:///{tmp_path / 'mirror.db'}")
    try:
        page = _page(5, meta={"k": "välue \U0001d518"})
        with mirror.write() as session:
            seen = _statements(session)
            new = plan_new(THREAD, page, direction="desc", ties="stable", prev=None, now=NOW)
            assert new is not None
            done = messages.insert_new(session, new.rows)
        assert done
        counts, last = new.counts, new.last
        assert counts.added == 5
        assert last is not None
        assert last.created_at == page[-1].created_at
        assert [s.split()[0] for s in seen] == ["INSERT", "COMMIT"]
        with mirror.read() as session:
            rows = session.execute(
                text("SELECT raw, typeof(raw) AS kind, metadata FROM message ORDER BY id")
            ).all()
        assert [r.raw for r in rows] == [m.raw.decode() for m in page]
        assert {r.kind for r in rows} == {"text"}  # stored as text, though bound as bytes
        assert {orjson.dumps(orjson.loads(r.metadata)) for r in rows} == {
            orjson.dumps({"k": "välue \U0001d518"})
        }
    finally:
        mirror.dispose()


def test_a_page_holding_a_stored_message_falls_back_and_writes_nothing(mirror: Mirror) -> None:
    """One message already stored: the one-statement insert leaves no row behind (on SQLite the
    statement fails whole; PostgreSQL never tries it), and the ordinary apply counts right."""
    page = _page(4)
    with mirror.write() as session:
        messages.write(session, THREAD, [(page[2], 0)], [], NOW)
    with mirror.write() as session:
        new = plan_new(THREAD, page, direction="asc", ties="stable", prev=None, now=NOW)
        assert new is not None
        assert not messages.insert_new(session, new.rows)
        assert session.execute(text("SELECT count(*) FROM message")).scalar_one() == 1
        counts, _, _ = write_page(
            session, THREAD, page, direction="asc", ties="stable", prev=None, now=NOW
        )
    assert (counts.added, counts.changed) == (3, 0)
    with mirror.read() as session:
        assert sorted(load_stored(session, [m.id for m in page])) == sorted(m.id for m in page)


def test_a_cursor_advance_moves_only_what_it_names(mirror: Mirror) -> None:
    with mirror.write() as session:
        add_threads(session, [THREAD])  # with its empty sync state
        sync_state.advance(session, THREAD, {"initial_after": "msg_a", "high_water_id": "msg_z"})
    when = datetime(2026, 11, 29, 5, 6, 7, 891011, tzinfo=UTC)
    with mirror.write() as session:
        sync_state.advance(session, THREAD, {"initial_done": True, "last_full_at": when})
        sync_state.advance(session, THREAD, {"initial_after": None})
    with mirror.read() as session:
        state = session.get(SyncState, THREAD)
        assert state is not None
        assert (state.pages, state.initial_done, state.initial_after, state.high_water_id) == (
            3, True, None, "msg_z",
        )  # fmt: skip
        assert state.last_full_at is not None
        assert state.last_full_at.replace(tzinfo=UTC) == when
    with mirror.write() as session, pytest.raises(ValueError, match="pages"):
        sync_state.advance(session, THREAD, {"pages": 0})


def test_raw_is_stored_as_text_by_inserts_and_updates(tmp_path: Path) -> None:
    """``raw`` is bound as bytes; SQLite must keep it TEXT (users query it with JSON functions)."""
    mirror = Mirror(f"sqlite:///{tmp_path / 'mirror.db'}")
    try:
        first, edited = _page(1)[0], _page(1, meta={"k": "v"})[0]
        with mirror.write() as session:
            messages.write(session, THREAD, [(first, 0)], [], NOW)
        with mirror.write() as session:
            messages.write(session, THREAD, [], [(edited, 0)], NOW)
        with mirror.read() as session:
            row = session.execute(
                text("SELECT typeof(raw), raw, json_extract(raw, '$.metadata.k') FROM message")
            ).one()
    finally:
        mirror.dispose()
    assert tuple(row) == ("text", edited.raw.decode(), "v")


def test_the_same_object_with_its_keys_reordered_is_not_a_change(
    mirror: Mirror, read_form: str
) -> None:
    """Digests are over bytes; a server sending an object with its keys in another order has
    not changed it: no count, no write. A real change arriving reordered still counts once."""
    obj = {"id": "msg_k", "created_at": 1_700_000_000, "role": "user", "metadata": {"a": "1"}}
    with mirror.write() as session:
        add_threads(session, [THREAD])
        write_page(
            session, THREAD, [prepare(obj, THREAD)], direction="asc", ties="reverse",
            prev=None, now=NOW,
        )  # fmt: skip

    def again(listed: dict[str, object]) -> tuple[Counts, str]:
        with mirror.write() as session:
            counts, _, _ = write_page(
                session, THREAD, [prepare(listed, THREAD)], direction="asc", ties="reverse",
                prev=None, now=NOW,
            )  # fmt: skip
            raw = session.execute(text("SELECT raw FROM message WHERE id = 'msg_k'")).scalar_one()
        return counts, raw

    reordered = dict(reversed(list(obj.items())))
    assert prepare(reordered, THREAD).digest != prepare(obj, THREAD).digest  # the premise
    counts, raw = again(reordered)
    assert counts.writes == 0
    assert raw == orjson.dumps(obj).decode()  # as first received: nothing was written
    edited = {**reordered, "metadata": {"a": "2"}}
    counts, raw = again(edited)
    assert (counts.changed, counts.writes) == (1, 1)
    assert raw == orjson.dumps(edited).decode()


def test_a_census_is_unchanged_only_by_exactly_what_a_walk_would_keep() -> None:
    """The proof behind the memo of a walk that wrote: every listed message stored, live, the
    same and ranked as an ascending walk keeps it, with no live message left unlisted."""
    rows = [
        Stored("a", 10, 0, "da", False),
        Stored("b", 10, 1, "db", False),
        Stored("c", 11, 0, "dc", False),
        Stored("gone", 11, 1, "dg", True),
    ]
    census = Census(b"sig", lambda: rows)
    listed = [("a", 10, "da"), ("b", 10, "db"), ("c", 11, "dc")]
    assert census.unchanged_by(listed)
    assert not census.unchanged_by(listed[:2])  # "c" is live and unlisted: a walk deletes it
    assert not census.unchanged_by([*listed, ("gone", 11, "dg")])  # restored
    assert not census.unchanged_by([*listed, ("new", 12, "dn")])  # added
    assert not census.unchanged_by([("a", 10, "da"), ("b", 10, "XX"), ("c", 11, "dc")])
    assert not census.unchanged_by([("a", 10, "da"), ("b", 9, "db"), ("c", 11, "dc")])
    assert not census.unchanged_by([("b", 10, "db"), ("a", 10, "da"), ("c", 11, "dc")])  # ranks
    assert not census.unchanged_by([*listed, ("c", 11, "dc")])  # listed twice
    assert not census.unchanged_by([("c", 11, "dc"), ("a", 10, "da"), ("b", 10, "db")])


def test_a_census_computed_from_rows_signs_as_the_mirror_reads_it(
    mirror: Mirror, read_form: str
) -> None:
    """What a first sync's memo is keyed by: the signature of the census of what it stored,
    computed without reading it back, must be the one the next walk reads (else the memo never
    serves), whichever way the backend hands the census over."""
    _seed(mirror)
    with mirror.read() as session:
        read = load_census(session, THREAD)
    assert read is not None
    rows = sorted(read.stored.values(), key=lambda r: (r.created_at, r.rank, r.id))
    assert messages.census_sig(rows, sqlite=mirror.is_sqlite) == read.sig, read_form
    assert messages.census_sig(rows[1:], sqlite=mirror.is_sqlite) != read.sig
