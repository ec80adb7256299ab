"""``migrate`` end to end against the emulator on SQLite and PostgreSQL: chunking, provenance,
exactly once under faults after apply and crashes between the POST and the commit,
incremental appends, a 400 failing one thread only, and dry runs that send nothing."""

from __future__ import annotations

from typing import Any

import pytest

from worker.emulator import Emulator, FaultRule
from worker.migrate import ledger
from worker.migrate.run import Migration
from worker.migrate.settings import TargetProfile
from worker.migrate.target import target_key
from worker.store.db import Mirror
from worker.store.repo import add_threads

from .conftest import (
    KEY,
    conversation_of,
    conversations_for,
    expected_items,
    items_in,
    migrate,
    new_emulator,
    sync_source,
    target_client,
    target_settings,
)

pytestmark = pytest.mark.anyio
SIZES = (0, 1, 20, 21, 100)


async def seeded(mirror: Mirror, sizes: tuple[int, ...] = SIZES) -> tuple[Emulator, list[str]]:
    source = new_emulator(seed=5)
    ids = [source.seed(seed=10 + i, threads=1, messages=n)[0] for i, n in enumerate(sizes)]
    await sync_source(source, mirror, ids)
    return source, ids


def item_posts(target: Emulator) -> dict[str, int]:
    routes = target.stats()["routes"]
    return {
        kind: sum(
            n
            for route, counts in routes.items()
            if route.startswith("POST") and route.endswith(suffix)
            for status, n in counts.items()
        )
        for kind, suffix in (("create", "/conversations"), ("append", "/items"))
    }


@pytest.mark.parametrize("profile", ["openai", "foundry"])
async def test_each_thread_becomes_one_conversation_in_batches_of_20(
    mirror: Mirror, profile: TargetProfile
) -> None:
    _, ids = await seeded(mirror)
    target = new_emulator()
    report = await migrate(mirror, target, profile)
    assert not report.failed
    for thread_id, size in zip(ids, SIZES, strict=True):
        conversation = conversation_of(mirror, profile, thread_id)
        assert conversations_for(target, thread_id) == [conversation]
        assert items_in(target, conversation) == expected_items(mirror, thread_id)
        metadata = target.conversations.get(conversation).metadata
        assert metadata["source_thread_id"] == thread_id
        assert metadata["source_messages"] == str(size)
        assert metadata["source_profile"] == "azure"
    if profile == "foundry":
        # one create per thread plus one append per further 20 messages
        assert item_posts(target) == {"create": 5, "append": 0 + 0 + 0 + 1 + 4}
    else:
        # OpenAI cannot list conversations, so a lost create could never be found again: the
        # create is empty (an orphan would hold nothing) and every 20 messages (or part) are one
        # append: one request more per thread with messages than the formula above.
        assert item_posts(target) == {"create": 5, "append": 0 + 1 + 1 + 2 + 5}
    rows = {r.thread_id: r for r in ledger.rows(mirror, target_key(target_settings(profile)))}
    assert [rows[t].items for t in ids] == list(SIZES)
    assert all(rows[t].state == "migrated" for t in ids)


async def test_the_thread_metadata_follows_the_provenance_while_room_is_left(
    mirror: Mirror,
) -> None:
    source, ids = await seeded(mirror, (3, 3))
    big = {f"k{i:02}": f"v{i}" for i in range(12)} | {"source_thread_id": "clash"}
    source.modify_thread(ids[0], {"metadata": dict(list(big.items())[:16])})
    source.delete_thread(ids[1])  # the source no longer has it: no thread metadata, no failure
    target = new_emulator()
    report = await migrate(mirror, target, source=source)
    assert not report.failed
    first = target.conversations.get(conversation_of(mirror, "openai", ids[0])).metadata
    assert len(first) == 16
    assert first["source_thread_id"] == ids[0]
    assert [k for k in first if k.startswith("k")] == [f"k{i:02}" for i in range(9)]
    dropped = {c.part for c in report.threads[0].changes if c.message_id == "(thread)"}
    assert dropped == {"metadata.source_thread_id", "metadata.k09", "metadata.k10", "metadata.k11"}
    second = target.conversations.get(conversation_of(mirror, "openai", ids[1])).metadata
    assert set(second) == {
        "source_thread_id", "source_profile", "source_messages", "source_first_at",
        "source_last_at", "migrated_at", "migration_id",
    }  # fmt: skip


async def test_rerun_sends_nothing_and_new_messages_are_appended(mirror: Mirror) -> None:
    source, ids = await seeded(mirror, (21,))
    target = new_emulator()
    await migrate(mirror, target)
    target.reset_stats()
    again = await migrate(mirror, target)
    assert again.totals()["items"] == 0
    assert item_posts(target) == {"create": 0, "append": 0}
    source.append_messages(ids[0], n=3)
    await sync_source(source, mirror, ids)
    third = await migrate(mirror, target)
    assert third.totals()["items"] == 3
    assert item_posts(target) == {"create": 0, "append": 1}
    conversation = conversation_of(mirror, "openai", ids[0])
    assert items_in(target, conversation) == expected_items(mirror, ids[0])
    assert target.conversations.get(conversation).metadata["source_messages"] == "24"


@pytest.mark.parametrize("fault", ["500_after_apply", "drop", "500", "503"])
@pytest.mark.parametrize("route", ["items.create", "conversation.create"])
@pytest.mark.parametrize("profile", ["openai", "foundry"])
async def test_unknown_outcomes_are_settled_before_anything_is_resent(
    mirror: Mirror, fault: Any, route: str, profile: TargetProfile
) -> None:
    _, ids = await seeded(mirror, (45,))
    target = new_emulator()
    target.add_fault(FaultRule(fault=fault, route=route, times=1))
    report = await migrate(mirror, target, profile)
    rows = {r.thread_id: r for r in ledger.rows(mirror, target_key(target_settings(profile)))}
    row = rows[ids[0]]
    assert not report.failed, report.failed
    assert report.threads[0].settled == 1
    conversation = conversation_of(mirror, profile, ids[0])
    assert items_in(target, conversation) == expected_items(mirror, ids[0])
    applied = fault in ("500_after_apply", "drop")
    lost = ledger.lost_creates(mirror, target_key(target_settings(profile)))
    if profile == "openai" and route == "conversation.create":
        # OpenAI cannot list conversations: a create of unknown outcome is counted, sent again,
        # and the one it may have made (here: when the fault came after the apply) never used.
        # It was created empty: it holds nothing.
        assert row.lost_creates == 1
        assert report.threads[0].lost_creates == 1
        assert len(lost[ids[0]]) == 1
        made = conversations_for(target, ids[0])
        assert len(made) == (2 if applied else 1)
        assert conversation in made
        assert [items_in(target, c) for c in made if c != conversation] == ([[]] if applied else [])
    else:
        assert row.lost_creates == 0
        assert lost == {}
        assert conversations_for(target, ids[0]) == [conversation]


@pytest.mark.parametrize("profile", ["openai", "foundry"])
async def test_a_crash_after_the_create_before_its_commit_leaves_no_history_behind(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch, profile: TargetProfile
) -> None:
    """The process dies after the service made the conversation, before the ledger says so.
    Foundry finds it again by its metadata; OpenAI cannot (no list, the id was in the lost
    answer): the rerun makes another and records the lost one, which was created empty."""
    _, ids = await seeded(mirror, (45,))
    target = new_emulator()
    real = ledger.confirm

    class Crash(BaseException):
        pass

    def crashing(*args: Any, **kwargs: Any) -> Any:
        raise Crash  # the first confirm is the create's

    monkeypatch.setattr(ledger, "confirm", crashing)
    with pytest.raises(BaseExceptionGroup):
        await migrate(mirror, target, profile)
    [made] = conversations_for(target, ids[0])
    monkeypatch.setattr(ledger, "confirm", real)
    report = await migrate(mirror, target, profile)
    assert not report.failed
    assert report.threads[0].settled == 1
    conversation = conversation_of(mirror, profile, ids[0])
    assert items_in(target, conversation) == expected_items(mirror, ids[0])
    row = {r.thread_id: r for r in ledger.rows(mirror, target_key(target_settings(profile)))}[
        ids[0]
    ]
    if profile == "foundry":
        assert conversation == made
        assert row.lost_creates == 0
        assert conversations_for(target, ids[0]) == [conversation]
    else:
        assert conversation != made
        assert items_in(target, made) == []  # the orphan: metadata only
        assert row.lost_creates == report.threads[0].lost_creates == 1
        assert conversations_for(target, ids[0]) == [made, conversation]
        assert report.totals()["lost_creates"] == 1


async def test_a_crash_between_the_post_and_the_commit_is_settled(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process dies after the service applied a batch, before the ledger says so."""
    _, ids = await seeded(mirror, (45,))
    target = new_emulator()
    real = ledger.confirm
    calls = {"n": 0}

    class Crash(BaseException):
        pass

    def crashing(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the first append landed; the process is gone
            raise Crash
        return real(*args)

    monkeypatch.setattr(ledger, "confirm", crashing)
    with pytest.raises(BaseExceptionGroup):
        await migrate(mirror, target)
    monkeypatch.setattr(ledger, "confirm", real)
    report = await migrate(mirror, target)
    assert not report.failed
    assert report.threads[0].settled == 1
    conversation = conversation_of(mirror, "openai", ids[0])
    assert items_in(target, conversation) == expected_items(mirror, ids[0])


async def test_a_400_fails_that_thread_and_the_others_go_on(mirror: Mirror) -> None:
    await seeded(mirror, (3, 3))
    target = new_emulator()
    target.add_fault(FaultRule(fault="400", route="conversation.create", times=1))
    report = await migrate(mirror, target)
    failed = [t for t in report.threads if t.error]
    assert len(failed) == 1
    assert "scripted 400" in (failed[0].error or "")
    assert len(target.conversations.by_id) == 1
    rows = {r.thread_id: r for r in ledger.rows(mirror, target_key(target_settings("openai")))}
    assert rows[failed[0].thread_id].state == "failed"
    assert "scripted 400" in (rows[failed[0].thread_id].last_error or "")
    again = await migrate(mirror, target)  # the refused batch was never sent: it goes now
    assert not again.failed
    assert len(target.conversations.by_id) == 2


@pytest.mark.parametrize("profile", ["openai", "foundry"])
async def test_conflicting_writes_stop_the_thread(mirror: Mirror, profile: TargetProfile) -> None:
    _, ids = await seeded(mirror, (25,))
    target = new_emulator()
    target.add_fault(FaultRule(fault="503", route="items.create", times=1))
    target.add_fault(FaultRule(fault="503", route="items.list", times=8))
    report = await migrate(mirror, target, profile)
    assert report.failed  # the settle read failed too: the batch stays "sent"
    conversation = conversation_of(mirror, profile, ids[0])
    stored = target.conversations.get(conversation)
    foreign = {"role": "user", "content": [{"type": "input_text", "text": "not ours"}]}
    stored.items.append({"type": "message", "id": "msg_foreign", "status": "completed", **foreign})
    again = await migrate(mirror, target, profile)
    assert "something else wrote to it" in (again.threads[0].error or "")
    # Nothing more was sent. Foundry's create carried the first 20; OpenAI's is empty (a lost
    # one could not be found again), so there the append that failed was the first 20.
    assert len(stored.items) == {"foundry": 21, "openai": 1}[profile]


async def test_dry_run_sends_nothing_and_changes_nothing(mirror: Mirror) -> None:
    await seeded(mirror, (0, 45))
    target = new_emulator()
    report = await migrate(mirror, target, dry_run=True)
    assert target.stats()["routes"] == {}
    assert ledger.rows(mirror, target_key(target_settings("openai"))) == []
    assert [t.items for t in report.threads] == [0, 45]
    # OpenAI: an empty create, then every 20 (or part) appended (a lost create holds nothing).
    assert [t.requests for t in report.threads] == [1, 4]
    foundry = await migrate(mirror, target, "foundry", dry_run=True)
    # Foundry: one create carrying the first 20, one append per further 20.
    assert [t.requests for t in foundry.threads] == [1, 3]
    assert target.stats()["routes"] == {}


async def test_unsynced_and_unknown_threads_are_named(mirror: Mirror) -> None:
    _, ids = await seeded(mirror, (2,))
    target = new_emulator()
    report = await migrate(mirror, target, thread_ids=[ids[0], "thread_nope"])
    assert [t.error for t in report.threads] == [
        None,
        "not in the mirror: `threadsync threads add`",
    ]
    assert KEY


async def test_a_429_is_waited_out_not_settled(mirror: Mirror) -> None:
    """A 429 proves nothing was done: the shared retry policy sends again after Retry-After,
    with no settling read and no duplicate."""
    _, ids = await seeded(mirror, (30,))
    target = new_emulator()
    target.add_fault(FaultRule(fault="429", route="items.create", times=2, retry_after=3))
    report = await migrate(mirror, target)
    assert not report.failed
    assert report.threads[0].settled == 0
    conversation = conversation_of(mirror, "openai", ids[0])
    assert items_in(target, conversation) == expected_items(mirror, ids[0])
    listed = [r for r in target.stats()["routes"] if r.startswith("GET")]
    assert listed == []


async def test_since_picks_threads_with_a_message_at_or_after(mirror: Mirror) -> None:
    source, ids = await seeded(mirror, (2, 2))
    source.advance_clock(3600)
    source.append_messages(ids[1], n=1)
    await sync_source(source, mirror, ids)
    newest = max(m["created_at"] for m in source.truth()["threads"][ids[1]])
    target = new_emulator()
    key = target_key(target_settings("openai"))
    async with target_client(target, "openai") as client:
        report = await Migration(mirror, key, client).run(None, newest)
    assert [t.thread_id for t in report.threads] == [ids[1]]
    assert len(target.conversations.by_id) == 1


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_the_order_of_an_append_answer_does_not_matter(mirror: Mirror, order: Any) -> None:
    """Whether an append answers its items as sent or newest first, the anchor is the newest
    item, so a later unknown outcome still settles exactly."""
    _, ids = await seeded(mirror, (70,))
    target = new_emulator()
    target.set_behaviour(appended_order=order)
    target.add_fault(FaultRule(fault="500_after_apply", route="items.create", times=1))
    target.add_fault(FaultRule(fault="drop", route="items.create", times=1))
    report = await migrate(mirror, target)
    assert not report.failed
    assert report.threads[0].settled == 2
    conversation = conversation_of(mirror, "openai", ids[0])
    assert items_in(target, conversation) == expected_items(mirror, ids[0])


@pytest.mark.parametrize("mode", ["keep", "drop", "reject"])
async def test_input_annotations_kept_dropped_or_refused(mirror: Mirror, mode: Any) -> None:
    """Whether the service keeps file_path annotations on input is unverified: kept or silently
    dropped, the migration is identical by content; refused, the thread fails with the
    server's message and nothing of it lands."""
    source = new_emulator(seed=5)
    [thread_id] = source.seed(seed=1, threads=1, messages=2)
    note = {
        "type": "file_path",
        "text": "sandbox:/a.csv",
        "file_path": {"file_id": "file-a"},
        "start_index": 0,
        "end_index": 14,
    }
    source.append_messages(thread_id, messages=[{"role": "user", "content": "q"}])
    [answer] = source.append_messages(thread_id, messages=[{"role": "user", "content": "x"}])
    record = source.message(thread_id, answer["id"])
    record.data["role"] = "assistant"
    record.data["content"] = [
        {"type": "text", "text": {"value": "sandbox:/a.csv", "annotations": [note]}}
    ]
    await sync_source(source, mirror, [thread_id])
    target = new_emulator()
    target.set_behaviour(input_annotations=mode)
    report = await migrate(mirror, target)
    if mode == "reject":
        assert "Annotations are not supported on input items" in (report.threads[0].error or "")
        # OpenAI's create is empty (a lost one could not be found again): the refused append
        # leaves the thread's own conversation, holding no item.
        assert [c.items for c in target.conversations.by_id.values()] == [[]]
        return
    assert not report.failed
    conversation = conversation_of(mirror, "openai", thread_id)
    assert items_in(target, conversation) == expected_items(mirror, thread_id)
    stored = target.conversations.get(conversation).items[-1]["content"][0]["annotations"]
    assert stored == (
        [] if mode == "drop" else [{"type": "file_path", "file_id": "file-a", "index": 0}]
    )


async def test_threads_whose_first_sync_has_not_finished_wait(mirror: Mirror) -> None:
    _, ids = await seeded(mirror, (2,))
    with mirror.write() as session:
        add_threads(session, ["thread_later"])
    target = new_emulator()
    report = await migrate(mirror, target)
    assert [(t.thread_id, t.error) for t in report.threads] == [(ids[0], None)]
    named = await migrate(mirror, target, thread_ids=["thread_later"])
    assert named.threads[0].error == "its first sync has not finished"
