"""Messages no well-behaved server sends, planted in the emulator as they are.

Every string field may hold what PostgreSQL's text cannot (U+0000; a lone surrogate, which JSON
carries as an escape), characters outside the BMP, direction marks, and text that merely looks
like an escape. Ids stay valid: the API's id syntax never allows any of this.
"""

from __future__ import annotations

import json
from typing import Any

from worker.emulator import Emulator
from worker.emulator.objects import message_object
from worker.emulator.timeline import Record

HOSTILE = (
    "\x00",
    "nul \x00 inside",
    "\ud800",
    "lone \udfff low",
    "astral \U0001f9f5\U0001d518",
    "rtl \u200f\u202e mark",
    "looks escaped \\u0000 \\ud800",
    'quote " backslash \\',
    "\ufffd",
)


def hostile_message(
    emulator: Emulator, thread_id: str, created_at: int, text: str, **fields: Any
) -> dict[str, Any]:
    """A message whose text, annotation and metadata carry ``text``; ``fields`` override."""
    obj = message_object(
        message_id=emulator.new_id("msg_"),
        thread_id=thread_id,
        created_at=created_at,
        role="user",
        content=[
            {
                "type": "text",
                "text": {
                    "value": text,
                    "annotations": [
                        {
                            "type": "file_citation",
                            "text": text,
                            "file_citation": {"file_id": "assistant-abc"},
                            "start_index": 0,
                            "end_index": 1,
                        }
                    ],
                },
            }
        ],
        metadata={text[:64]: text, "plain": "value"},
    )
    obj.update(fields)
    return obj


def plant(emulator: Emulator, thread_id: str, objects: list[dict[str, Any]]) -> None:
    """Append ``objects`` to the thread as they are (no validation: a server's answer)."""
    with emulator.lock:
        timeline = emulator.timeline(thread_id)
        for obj in objects:
            timeline.add(Record(obj, emulator.next_seq()))
        emulator.changed()


def hostile_thread(emulator: Emulator) -> str:
    """A new thread holding one hostile message per :data:`HOSTILE` string, plus a message
    whose status carries them too (a role is user or assistant: anything else is malformed)."""
    thread_id: str = emulator.create_thread()["id"]
    now = int(emulator.now())
    messages = [hostile_message(emulator, thread_id, now, text) for text in HOSTILE]
    messages.append(hostile_message(emulator, thread_id, now, "fields", status="do\x00ne\ud800"))
    plant(emulator, thread_id, messages)
    return thread_id


def normalised(obj: Any) -> str:
    """One JSON text per value, key order kept: what "equal after JSON normalisation" compares."""
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"))
