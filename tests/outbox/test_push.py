"""Pushing edits to the emulator: both metadata behaviours, faults, crashes, conflicts, failures.

The yardstick: the emulator's final metadata equals the intended map for every edited message, and
its log of modify calls shows exactly one applied write per message (no redundant write).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest
from pydantic import SecretStr
from sqlmodel import Session

from tests.outbox.conftest import World, make_world
from worker.client import ApiClient
from worker.config import ApiSettings, RetrySettings
from worker.emulator import FaultRule
from worker.outbox import edit_counts, push_pending, set_metadata, show_metadata
from worker.outbox import push as push_module
from worker.outbox.record import load_open, store_outcomes, store_truth
from worker.store.db import Mirror
from worker.store.models import Message
from worker.sync.plan import digest_of
from worker.testing import EmulatorTransport, SleepRecorder, emulated_client

pytestmark = pytest.mark.anyio


async def push(world: World, **kwargs: Any) -> push_module.PushReport:
    async with emulated_client(world.emulator) as client:
        return await push_pending(client, world.mirror, sleep=SleepRecorder(), **kwargs)


def edit_all(world: World) -> dict[str, dict[str, str]]:
    """Edit every message: set two keys and unset one the server holds (when there is one)."""
    intended: dict[str, dict[str, str]] = {}
    for thread in world.thread_ids:
        for i, msg in enumerate(world.messages(thread)):
            meta = dict(msg["metadata"] or {})
            unset = sorted(meta)[:1] if len(meta) < 15 else []
            if len(meta) >= 15:
                continue  # at the limit already; adding keys would be refused locally
            set_metadata(
                world.mirror, thread, msg["id"], set={"reviewed": "yes", "n": str(i)}, unset=unset
            )
            intended[msg["id"]] = {
                **meta,
                "reviewed": "yes",
                "n": str(i),
                **dict.fromkeys(unset, ""),
            }
    return intended


def assert_landed_once(world: World, intended: dict[str, dict[str, str]]) -> None:
    for thread in world.thread_ids:
        for msg in world.messages(thread):
            if msg["id"] in intended:
                assert msg["metadata"] == intended[msg["id"]], msg["id"]
    writes = Counter(c["message_id"] for c in world.applied_modifies())
    assert writes == dict.fromkeys(intended, 1)


def mirrored(mirror: Mirror, message_id: str) -> dict[str, Any] | None:
    with mirror.read() as session:
        row = session.get(Message, message_id)
        assert row is not None
        return row.meta


@pytest.mark.parametrize("behaviour", ["merge", "replace"])
async def test_push_lands_every_edit_once_with_two_requests(world: World, behaviour: str) -> None:
    """Unset keys end blank on both service behaviours; one read and one write per edit; the
    returned object becomes the mirror's truth."""
    world.emulator.set_behaviour(metadata=behaviour)
    intended = edit_all(world)
    report = await push(world)
    assert report.ok
    assert len(report.applied) == len(intended)
    assert report.requests == 2 * len(intended)
    assert_landed_once(world, intended)
    for msg_id, meta in intended.items():
        assert mirrored(world.mirror, msg_id) == meta
    with world.mirror.read() as session:
        assert edit_counts(session) == {"pending": 0, "conflicted": 0, "failed": 0}
    again = await push(world)
    assert again.outcomes == []


FAULTS = ("500", "503", "500_after_apply", "drop", "truncate", "429")


@pytest.mark.parametrize("behaviour", ["merge", "replace"])
async def test_faults_on_modify_never_cause_a_second_write(mirror: Mirror, behaviour: str) -> None:
    """Each thread's first modifies meet one kind of fault (applied or not, answer lost or not):
    every message ends with the intended map and exactly one applied write."""
    world = await make_world(mirror, threads=len(FAULTS), messages=2)
    world.emulator.set_behaviour(metadata=behaviour)
    intended = edit_all(world)
    for thread, fault in zip(world.thread_ids, FAULTS, strict=True):
        rule = FaultRule(fault, times=2, route="modify", thread_id=thread)  # type: ignore[arg-type]
        world.emulator.add_fault(rule)
    report = await push(world, concurrency=4)
    assert report.ok, report.outcomes
    assert all(rule.times != 2 for rule in world.emulator.faults.rules)  # each fault was met
    assert_landed_once(world, intended)


@pytest.mark.parametrize("behaviour", ["merge", "replace"])
async def test_random_fault_storm(mirror: Mirror, behaviour: str) -> None:
    """429 storms, 5xx, applied-then-500, drops and cut bodies on reads and writes at random:
    after pushes until nothing is left, every edit landed exactly once."""
    world = await make_world(mirror, threads=3, messages=6)
    world.emulator.set_behaviour(metadata=behaviour)
    intended = edit_all(world)
    for fault in ("429", "500", "503", "500_after_apply", "drop", "truncate"):
        world.emulator.add_fault(FaultRule(fault, times=None, probability=0.08))
    for _ in range(5):
        report = await push(world, retry=RetrySettings(max_attempts=4))
        assert not report.failed
        assert not report.conflicted
        if report.ok:
            break
    assert report.ok
    world.emulator.clear_faults()
    assert_landed_once(world, intended)


async def test_crash_between_modify_and_commit_is_finished_without_a_second_write(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process dies after the server applied the modify but before the mirror recorded it:
    the edit is still pending, and the next push completes it with a read only."""
    thread = world.thread_ids[0]
    msg = world.messages(thread)[0]["id"]
    set_metadata(world.mirror, thread, msg, set={"label": "refund"})

    class Crash(BaseException):
        pass

    def crash(*_: Any) -> None:
        raise Crash

    monkeypatch.setattr(push_module, "store_outcomes", crash)
    with pytest.raises(BaseExceptionGroup) as info:
        await push(world)
    assert info.group_contains(Crash)
    assert len(world.applied_modifies()) == 1
    assert show_metadata(world.mirror, thread, msg).state == "pending"

    monkeypatch.setattr(push_module, "store_outcomes", store_outcomes)
    world.emulator.reset_stats()
    report = await push(world)
    assert report.ok
    assert report.requests == 1
    assert not report.applied[0].written
    assert world.applied_modifies() == []
    assert show_metadata(world.mirror, thread, msg).state == "applied"
    assert mirrored(world.mirror, msg) == world.remote_metadata(thread, msg)


async def test_conflict_is_held_then_settled_by_policy(world: World) -> None:
    """A key changed on the server between sync and push: `fail` holds the edit and sends
    nothing; `remote` keeps the server's value; `local` then overrides it."""
    thread = world.thread_ids[0]
    msg = world.messages(thread)[0]["id"]
    set_metadata(world.mirror, thread, msg, set={"label": "refund", "mine": "1"})
    world.emulator.edit_metadata(thread, msg, {"label": "billing", "theirs": "2"})
    world.emulator.reset_stats()

    held = await push(world)
    assert not held.ok
    assert [o.keys for o in held.conflicted] == [["label"]]
    assert world.emulator.stats()["modify_calls"] == []
    view = show_metadata(world.mirror, thread, msg)
    assert view.state == "conflicted"
    assert [(c.key, c.local, c.remote) for c in view.conflicts] == [("label", "refund", "billing")]
    with world.mirror.read() as session:
        assert edit_counts(session)["conflicted"] == 1

    settled = await push(world, policy="remote")
    assert settled.ok
    remote = world.remote_metadata(thread, msg)
    assert (remote["label"], remote["mine"], remote["theirs"]) == ("billing", "1", "2")

    set_metadata(world.mirror, thread, msg, set={"label": "refund"})
    world.emulator.edit_metadata(thread, msg, {"label": "other"})
    forced = await push(world, policy="local")
    assert forced.ok
    assert world.remote_metadata(thread, msg)["label"] == "refund"


@pytest.mark.parametrize("behaviour", ["merge", "replace"])
async def test_keys_changed_only_remotely_are_kept(world: World, behaviour: str) -> None:
    """The complete map sent carries the server's own new keys, so replace does not lose them."""
    world.emulator.set_behaviour(metadata=behaviour)
    thread = world.thread_ids[0]
    msg = world.messages(thread)[0]["id"]
    set_metadata(world.mirror, thread, msg, set={"mine": "1"})
    world.emulator.edit_metadata(thread, msg, {"theirs": "2"})
    assert (await push(world)).ok
    remote = world.remote_metadata(thread, msg)
    assert (remote["mine"], remote["theirs"]) == ("1", "2")


async def test_deleted_message_fails_with_the_servers_message(world: World) -> None:
    """A 404 marks the edit failed (no retry); `--retry-failed` tries it again."""
    thread = world.thread_ids[0]
    msg = world.messages(thread)[0]["id"]
    set_metadata(world.mirror, thread, msg, set={"a": "1"})
    world.emulator.delete_message(thread, msg)
    report = await push(world)
    assert [o.message_id for o in report.failed] == [msg]
    assert "404" in (report.failed[0].error or "")
    view = show_metadata(world.mirror, thread, msg)
    assert view.state == "failed"
    assert view.last_error
    assert (await push(world)).outcomes == []
    retried = await push(world, retry_failed=True)
    assert [o.result for o in retried.outcomes] == ["failed"]


async def test_merged_map_over_the_limit_fails_without_a_write(world: World) -> None:
    """Remote keys plus local keys exceeding 16 pairs: failed locally, nothing sent."""
    thread = world.thread_ids[0]
    msg = world.messages(thread)[0]["id"]
    set_metadata(world.mirror, thread, msg, set={"mine": "1"})
    world.emulator.edit_metadata(thread, msg, None)
    world.emulator.set_behaviour(metadata="replace")
    world.emulator.edit_metadata(thread, msg, {f"r{i}": "v" for i in range(16)})
    world.emulator.reset_stats()
    report = await push(world)
    assert len(report.failed) == 1
    assert "16" in (report.failed[0].error or "")
    assert world.emulator.stats()["modify_calls"] == []


def _holding(_session: Session) -> None:
    """A replicas-mode guard whose lease always holds."""


@pytest.mark.parametrize("guarded", [False, True], ids=["single", "guarded"])
async def test_auth_failure_stops_the_push(world: World, guarded: bool) -> None:
    """401 fails the edit that met it and leaves the rest pending for a later push; under a
    guard that holds (replicas mode) exactly the same: an auth failure is no lost lease."""
    intended = edit_all(world)
    api = ApiSettings(endpoint="http://127.0.0.1:1", api_key=SecretStr("revoked-key"))
    transport = EmulatorTransport(world.emulator)
    async with ApiClient(api, transport=transport, sleep=SleepRecorder()) as client:
        report = await push_pending(
            client, world.mirror, concurrency=1, guard=_holding if guarded else None
        )
    assert report.aborted
    assert len(report.failed) == 1
    assert report.unrecorded == []
    with world.mirror.read() as session:
        assert edit_counts(session) == {"pending": len(intended) - 1, "conflicted": 0, "failed": 1}


async def test_an_edit_made_during_the_push_is_kept(world: World) -> None:
    """The user edits again while a push is in flight: the finished push does not mark the newer
    wish done; it is rebased on the server's map and stays pending."""
    thread = world.thread_ids[0]
    msg = world.messages(thread)[0]
    set_metadata(world.mirror, thread, msg["id"], set={"a": "1"})
    (snap,) = load_open(world.mirror, retry_failed=False)
    set_metadata(world.mirror, thread, msg["id"], set={"b": "2"})
    pushed = {**msg, "metadata": {**(msg["metadata"] or {}), "a": "1"}}
    store_truth(world.mirror, snap, pushed, 1)
    view = show_metadata(world.mirror, thread, msg["id"])
    assert view.state == "pending"
    assert view.pending_keys == ["b"]
    assert view.mirrored == pushed["metadata"]


def stored_raw(mirror: Mirror, message_id: str) -> str:
    with mirror.read() as session:
        row = session.get(Message, message_id)
        assert row is not None
        return row.raw


async def test_a_malformed_modify_answer_never_becomes_the_mirrors_copy(world: World) -> None:
    """The modify is applied but answered with content of the wrong shape: that object is not
    stored; the push reads the message again, finds the wish there and records the read one."""
    thread = world.thread_ids[0]
    msg = world.messages(thread)[0]["id"]
    set_metadata(world.mirror, thread, msg, set={"reviewed": "yes"})
    world.emulator.add_fault(
        FaultRule("malform", route="modify", fields={"content": "the text itself"})
    )
    report = await push(world)
    assert report.ok, report.outcomes
    assert_landed_once(world, {msg: {**world.remote_metadata(thread, msg)}})
    assert mirrored(world.mirror, msg) == world.remote_metadata(thread, msg)
    assert orjson.loads(stored_raw(world.mirror, msg)) == world.emulator.message(thread, msg).data


async def test_a_malformed_read_fails_the_edit_naming_the_field(world: World) -> None:
    """The push's read answers metadata as a list: the edit fails with the field and the message
    named, nothing is written to the server or to the mirror's copy."""
    thread = world.thread_ids[0]
    msg = world.messages(thread)[0]["id"]
    before = stored_raw(world.mirror, msg)
    set_metadata(world.mirror, thread, msg, set={"reviewed": "yes"})
    world.emulator.add_fault(FaultRule("malform", route="get", fields={"metadata": ["x"]}))
    report = await push(world)
    assert [o.message_id for o in report.failed] == [msg]
    error = report.failed[0].error or ""
    assert "metadata is a list" in error
    assert msg in error
    assert world.emulator.stats()["modify_calls"] == []
    assert stored_raw(world.mirror, msg) == before
    assert show_metadata(world.mirror, thread, msg).state == "failed"


async def test_the_servers_answer_is_written_as_a_sync_writes_it(world: World) -> None:
    """The object a modify answers with becomes the mirror's row the way a sync writes a listed
    message: every queryable column from the object (not only raw, digest and status) and
    ``deleted_at`` cleared, on either backend. (The push once left role, run_id and
    assistant_id as they were, and a row tombstoned meanwhile stayed tombstoned.)"""
    thread = world.thread_ids[0]
    msg = world.messages(thread)[0]
    set_metadata(world.mirror, thread, msg["id"], set={"a": "1"})
    (snap,) = load_open(world.mirror, retry_failed=False)
    with world.mirror.write() as session:
        row = session.get(Message, msg["id"])
        assert row is not None
        row.role, row.run_id, row.assistant_id = "user", None, None
        row.deleted_at = row.updated_at  # tombstoned by a walk while the push was out
    answer = {
        **msg,
        "role": "assistant",
        "run_id": "run_answered",
        "assistant_id": "asst_answered",
        "metadata": {**(msg["metadata"] or {}), "a": "1"},
    }
    store_truth(world.mirror, snap, answer, 1)
    with world.mirror.read() as session:
        row = session.get(Message, msg["id"])
        assert row is not None
        stored = (row.role, row.run_id, row.assistant_id, row.status, row.deleted_at)
        raw, digest, created_at = row.raw, row.digest, row.created_at
    assert stored == ("assistant", "run_answered", "asst_answered", msg.get("status"), None)
    assert orjson.loads(raw) == answer
    assert digest == digest_of(orjson.dumps(answer))
    assert created_at == msg["created_at"]
