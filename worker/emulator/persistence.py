"""``--state FILE``: the emulator's threads, messages and behaviour as one orjson document.

Writes are atomic (temp file in the same directory, then rename) so a crash never leaves a
half-written state. Faults and statistics are deliberately not persisted: they belong to a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from worker.emulator.behaviour import Behaviour
from worker.emulator.conversations import Conversations
from worker.emulator.timeline import Record, Timeline
from worker.files import output_file

if TYPE_CHECKING:
    from worker.emulator.state import Emulator

FORMAT_VERSION = 1


def _records(timeline: Timeline) -> list[dict[str, Any]]:
    return [{"seq": r.seq, "deleted": r.deleted, "data": r.data} for r in timeline.entries]


def _timeline(rows: list[dict[str, Any]]) -> Timeline:
    timeline = Timeline()
    for row in rows:
        record = Record(row["data"], row["seq"])
        record.deleted = row["deleted"]
        timeline.add(record)
    return timeline


def snapshot(emulator: Emulator) -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "seq": emulator.seq,
        "behaviour": emulator.behaviour.to_dict(),
        "threads": _records(emulator.threads),
        "messages": {tid: _records(tl) for tid, tl in emulator.messages.items()},
        "conversations": emulator.conversations.to_dict(),
    }


def restore(emulator: Emulator, state: dict[str, Any]) -> None:
    if state.get("version") != FORMAT_VERSION:
        raise ValueError(f"unsupported emulator state version {state.get('version')!r}")
    emulator.seq = state["seq"]
    emulator.behaviour = Behaviour().updated(state["behaviour"])
    emulator.threads = _timeline(state["threads"])
    emulator.messages = {tid: _timeline(rows) for tid, rows in state["messages"].items()}
    emulator.used_ids = set(emulator.threads.by_id)
    for timeline in emulator.messages.values():
        emulator.used_ids.update(timeline.by_id)
    # Absent from states saved before the Conversations API was emulated.
    emulator.conversations = Conversations.from_dict(state.get("conversations", {}))
    for conversation in emulator.conversations.by_id.values():
        emulator.used_ids.add(conversation.id)
        emulator.used_ids.update(item["id"] for item in conversation.items)


def save(emulator: Emulator, path: Path) -> None:
    payload = orjson.dumps(snapshot(emulator))
    path.parent.mkdir(parents=True, exist_ok=True)
    with output_file(path) as handle:  # atomic for a file; a symlink followed, a FIFO streamed
        handle.write(payload)


def load(emulator: Emulator, path: Path) -> None:
    restore(emulator, orjson.loads(path.read_bytes()))
