"""Queueing edits locally: validation first, coalescing, `metadata show`, counts (both stores)."""

from __future__ import annotations

import pytest

from tests.outbox.conftest import World
from worker.outbox import (
    MetadataLimitError,
    UnknownMessageError,
    edit_counts,
    set_metadata,
    show_metadata,
)
from worker.outbox.models import MetadataEdit

pytestmark = pytest.mark.anyio


def first_message(world: World) -> tuple[str, str, dict[str, str]]:
    thread = world.thread_ids[0]
    msg = world.messages(thread)[0]
    return thread, msg["id"], dict(msg["metadata"] or {})


async def test_edit_is_queued_with_its_base(world: World) -> None:
    """The wish and the mirrored map it started from are stored together; nothing is sent."""
    thread, msg, meta = first_message(world)
    edit = set_metadata(world.mirror, thread, msg, set={"reviewed": "yes"})
    assert edit.state == "pending"
    assert edit.base == meta
    assert edit.desired == {**meta, "reviewed": "yes"}
    assert edit.keys == ["reviewed"]
    assert world.emulator.stats()["routes"] == {}
    view = show_metadata(world.mirror, thread, msg)
    assert (view.state, view.mirrored, view.pending_keys) == ("pending", meta, ["reviewed"])


async def test_several_edits_coalesce_into_one(world: World) -> None:
    """Edits before a push merge into one row whose base stays the first edit's base."""
    thread, msg, meta = first_message(world)
    set_metadata(world.mirror, thread, msg, set={"a": "1", "b": "2"})
    edit = set_metadata(world.mirror, thread, msg, set={"a": "3"}, unset=["b"])
    assert edit.base == meta
    assert edit.desired == {**meta, "a": "3"}
    assert edit.revision == 2
    with world.mirror.read() as session:
        assert session.get(MetadataEdit, msg) is not None
        assert edit_counts(session) == {"pending": 1, "conflicted": 0, "failed": 0}


async def test_limit_violation_queues_nothing(world: World) -> None:
    """A map that would break a limit is refused with the key named; the queue is unchanged."""
    thread, msg, _ = first_message(world)
    set_metadata(world.mirror, thread, msg, set={"ok": "1"})
    with pytest.raises(MetadataLimitError, match=r"'big'.*512"):
        set_metadata(world.mirror, thread, msg, set={"big": "x" * 513})
    with pytest.raises(MetadataLimitError, match="at most 16"):
        set_metadata(world.mirror, thread, msg, set={f"n{i}": "v" for i in range(16)})
    view = show_metadata(world.mirror, thread, msg)
    assert view.pending_keys == ["ok"]


async def test_setting_the_mirrored_value_queues_nothing(world: World) -> None:
    """An edit that changes nothing against the mirror creates no outbox row."""
    thread, msg, _ = first_message(world)
    set_metadata(world.mirror, thread, msg, set={"x": "1"})
    with world.mirror.write() as session:
        row = session.get(MetadataEdit, msg)
        assert row is not None
        session.delete(row)
    thread2 = world.thread_ids[1]
    other = world.messages(thread2)[0]
    edit = set_metadata(world.mirror, thread2, other["id"], unset=["never-there"])
    assert edit.state == "unchanged"
    with world.mirror.read() as session:
        assert session.get(MetadataEdit, other["id"]) is None


async def test_unknown_message_is_a_clear_error(world: World) -> None:
    """A message that is not mirrored (or not in that thread) cannot be edited."""
    thread, msg, _ = first_message(world)
    with pytest.raises(UnknownMessageError, match="threadsync sync"):
        set_metadata(world.mirror, thread, "msg_nope", set={"a": "1"})
    with pytest.raises(UnknownMessageError):
        set_metadata(world.mirror, world.thread_ids[1], msg, set={"a": "1"})
