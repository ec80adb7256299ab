"""The reads of ``message`` and ``sync_state`` that a migration, `threadsync status` and `doctor`
make (``worker/store/messages.py``, ``worker/store/sync_state.py``), on SQLite and PostgreSQL,
over messages whose text holds what no well-behaved server sends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlmodel import Session

from tests.hostile import HOSTILE
from worker.jsontext import loads
from worker.store import messages, sync_state
from worker.store.db import Mirror
from worker.store.messages import StatusCounts
from worker.store.models import SyncState, TrackedThread
from worker.store.repo import add_threads, thread_statuses, track_many
from worker.sync.plan import prepare

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
T = 1_700_000_000


def _message(
    thread_id: str, mid: str, created_at: int, text: str, **fields: str
) -> dict[str, object]:
    return {
        "id": mid,
        "object": "thread.message",
        "thread_id": thread_id,
        "created_at": created_at,
        "role": "user",
        "content": [{"type": "text", "text": {"value": text, "annotations": []}}],
        "metadata": {"note": text},
        **fields,
    }


def _store(
    session: Session, thread_id: str, objects: list[dict[str, object]], ranks: list[int]
) -> None:
    rows = [(prepare(obj, thread_id), rank) for obj, rank in zip(objects, ranks, strict=True)]
    messages.write(session, thread_id, rows, [], NOW)


def _hostile_thread(mirror: Mirror) -> list[dict[str, object]]:
    """Thread ``thread_h``: one message per hostile text, all at one second but the last two,
    tie ranks against id order; the second is tombstoned, the last still being written."""
    objects = [_message("thread_h", f"msg_{i:02d}", T, text) for i, text in enumerate(HOSTILE)]
    objects.append(_message("thread_h", "msg_a_late", T + 5, "late \x00", status="in_progress"))
    objects.append(_message("thread_h", "msg_b_early", T - 5, "early \ud800"))
    ranks = [len(HOSTILE) - i for i in range(len(HOSTILE))] + [0, 0]
    with mirror.write() as session:
        add_threads(session, ["thread_h", "thread_empty"])
        _store(session, "thread_h", objects, ranks)
        messages.tombstone(session, ["msg_01"], NOW)
    return objects


def test_migration_reads_return_live_messages_in_server_order(mirror: Mirror) -> None:
    objects = _hostile_thread(mirror)
    with mirror.read() as session:
        live = messages.live_in_order(session, "thread_h")
        newest = messages.newest_live(session)
        counts = messages.live_counts(session)
        ids = [o["id"] for o in objects]
        raws = messages.raws_by_id(session, [str(i) for i in ids])
    same_second = [f"msg_{i:02d}" for i in reversed(range(len(HOSTILE))) if i != 1]
    assert live == [
        ("msg_b_early", T - 5),
        *[(mid, T) for mid in same_second],  # tie rank first, then id
        ("msg_a_late", T + 5),
    ]
    assert newest == {"thread_h": T + 5}
    assert counts == {"thread_h": len(HOSTILE) + 1}
    assert set(raws) == set(ids)  # the tombstoned one too: a batch names what it sends
    for obj in objects:
        assert loads(raws[str(obj["id"])]) == obj  # every hostile text read back as stored
    with mirror.read() as session:
        assert messages.live_in_order(session, "thread_empty") == []
        assert messages.raws_by_id(session, []) == {}


def test_status_counts_split_live_tombstoned_and_in_progress(mirror: Mirror) -> None:
    _hostile_thread(mirror)
    with mirror.write() as session:
        messages.tombstone(session, ["msg_a_late"], NOW)  # in progress, but gone: not counted
        _store(
            session, "thread_h", [_message("thread_h", "msg_c", T, "x", status="in_progress")], [99]
        )
    with mirror.read() as session:
        assert messages.status_counts(session) == {
            "thread_h": StatusCounts(live=len(HOSTILE) + 1, deleted=2, in_progress=1)
        }
        statuses = {s.thread_id: s for s in thread_statuses(session)}
    assert (statuses["thread_h"].messages, statuses["thread_h"].deleted) == (len(HOSTILE) + 1, 2)
    assert statuses["thread_h"].in_progress == 1
    assert (statuses["thread_empty"].messages, statuses["thread_empty"].in_progress) == (0, 0)


def test_tracked_threads_read_with_their_state_in_the_order_added(mirror: Mirror) -> None:
    with mirror.write() as session:
        track_many(session, ["thread_b", "thread_a", "thread_c"], now=NOW)  # a microsecond apart
        session.add(TrackedThread(thread_id="thread_bare", added_at=NOW + timedelta(days=1)))
        sync_state.ensure(session, "thread_a").initial_done = True
        session.get_one(TrackedThread, "thread_c").state = "imported"
    with mirror.read() as session:
        assert sync_state.first_sync_done(session) == [
            ("thread_b", "active", False),
            ("thread_a", "active", True),
            ("thread_c", "imported", False),
            ("thread_bare", "active", False),  # no state row: not done
        ]
        pairs = sync_state.tracked_with_state(session)
    assert [(t.thread_id, s is None) for t, s in pairs] == [
        ("thread_b", False),
        ("thread_a", False),
        ("thread_c", False),
        ("thread_bare", True),
    ]
    assert pairs[1][1] is not None
    assert pairs[1][1].initial_done


def test_the_probe_thread_is_an_active_one_that_synced_well_if_any(mirror: Mirror) -> None:
    with mirror.read() as session:
        assert sync_state.probe_thread(session) is None
    with mirror.write() as session:
        track_many(session, ["thread_old", "thread_ok", "thread_paused"], now=NOW)
    with mirror.read() as session:
        assert sync_state.probe_thread(session) == "thread_old"  # none synced: the first added
    with mirror.write() as session:
        sync_state.ensure(session, "thread_ok").last_success_at = NOW
        sync_state.ensure(session, "thread_paused").last_success_at = NOW
        session.get_one(TrackedThread, "thread_paused").state = "paused"
    with mirror.read() as session:
        assert sync_state.probe_thread(session) == "thread_ok"


def test_new_threads_get_state_rows_with_the_model_defaults(mirror: Mirror) -> None:
    defaults = SyncState(thread_id="x").model_dump(exclude={"thread_id"})
    with mirror.write() as session:
        add_threads(session, ["thread_one"])  # the ORM path
        track_many(session, ["thread_bulk_1", "thread_bulk_2", "thread_one"], now=NOW)  # SQL
    with mirror.read() as session:
        rows = sync_state.of_threads(session, ["thread_one", "thread_bulk_1", "thread_bulk_2"])
    assert sorted(rows) == ["thread_bulk_1", "thread_bulk_2", "thread_one"]
    for row in rows.values():
        assert row.model_dump(exclude={"thread_id"}) == defaults


def test_the_state_insert_names_every_defaulted_column_once() -> None:
    sqlite_sql = sync_state.insert_defaults_sql(postgres=False)
    pg_sql = sync_state.insert_defaults_sql(postgres=True, from_cte="new")
    assert sqlite_sql.startswith("INSERT INTO sync_state (thread_id, ")
    assert "VALUES (?, " in sqlite_sql
    assert sqlite_sql.endswith("ON CONFLICT DO NOTHING")
    assert " FROM new ON CONFLICT DO NOTHING" in pg_sql
    assert "false" in pg_sql  # booleans as each backend writes them
    assert "false" not in sqlite_sql
    assert sqlite_sql.count("initial_done") == 1
    assert pg_sql.count("initial_done") == 1
