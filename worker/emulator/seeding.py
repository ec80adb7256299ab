"""Deterministic, varied seed data that looks like real threads.

Pure functions of a ``random.Random``: the same seed and clock give the same threads, ids and
texts. Varied on purpose: long and unicode texts, both annotation kinds, image_file parts,
attachments, metadata at the limits, both roles, all three statuses, and ``created_at`` bursts so
that ties within a second are common but not universal.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from typing import Any

_ALNUM = string.ascii_letters + string.digits
_WORDS = [
    *("thread", "message", "mirror", "export", "backup", "cursor", "page", "order"),
    *("metadata", "sync", "retry", "tie", "second", "assistant", "user", "run", "file"),
    *("citation", "image", "vector", "store", "azure", "openai", "latency", "quota"),
]
_UNICODE = [
    "Grüße aus Zürich — naïve café, façade.",
    "日本語のテキストとスレッドの同期。",
    "مرحبا بالعالم، هذا نص من اليمين إلى اليسار.",
    "Emoji 🧵🔁💾 and a ZWJ family 👨‍👩‍👧 plus a flag 🇺🇦.",
    "Combining marks: e\u0301 a\u0308 o\u0302; "
    "math \U0001d518\U0001d52b\U0001d526 \u2211\u222b\u221a.",
    "Ελληνικά και кириллица в одном сообщении.",
]
_REASONS = ["content_filter", "max_tokens", "run_cancelled", "run_expired", "run_failed"]


def new_id(prefix: str, rng: random.Random) -> str:
    """``thread_``/``msg_`` + 24 random alphanumerics: unique, and deliberately not sortable."""
    return prefix + "".join(rng.choices(_ALNUM, k=24))


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."


def text_value(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.07:  # long
        return "\n\n".join(sentence(rng, rng.randint(20, 40)) for _ in range(rng.randint(15, 30)))
    if roll < 0.3:
        return f"{sentence(rng, rng.randint(3, 12))} {rng.choice(_UNICODE)}"
    return sentence(rng, rng.randint(2, 30))


def make_annotations(rng: random.Random, text: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for kind in ("file_citation", "file_path"):
        if rng.random() < 0.5:
            continue
        start = rng.randint(0, max(0, len(text) - 12))
        marker = f"【{rng.randint(0, 9)}:{rng.randint(0, 9)}†source】"
        out.append(
            {
                "type": kind,
                "text": marker,
                kind: {"file_id": new_id("assistant-", rng)},
                "start_index": start,
                "end_index": start + len(marker),
            }
        )
    return out


def metadata(rng: random.Random) -> dict[str, str]:
    roll = rng.random()
    if roll < 0.6:
        return {}
    if roll < 0.9:
        return {f"k{i}": sentence(rng, 2)[:40] for i in range(rng.randint(1, 4))}
    # Right at the limits: 16 pairs, 64-char keys, 512-char values.
    return {(f"key{i:02d}_" + "x" * 64)[:64]: ("v" * 511 + str(i % 10))[:512] for i in range(16)}


@dataclass(slots=True)
class DraftMessage:
    """A seeded message before the emulator gives it an id and a sequence number."""

    created_at: int
    role: str
    content: list[dict[str, Any]]
    status: str = "completed"
    assistant_id: str | None = None
    run_id: str | None = None
    attachments: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    incomplete_details: dict[str, str] | None = None
    completed_at: int | None = None
    incomplete_at: int | None = None


def draft_thread(rng: random.Random, now: int, count: int) -> tuple[int, list[DraftMessage]]:
    """A thread's ``created_at`` and ``count`` messages in creation order, ending by ``now``."""
    times = _burst_times(rng, count)
    start = now - (times[-1] if times else 0) - rng.randint(0, 3600)
    assistant = new_id("asst_", rng)
    drafts = [_draft(rng, start + t, i, assistant) for i, t in enumerate(times)]
    _finish_statuses(rng, drafts)
    return start, drafts


def _burst_times(rng: random.Random, count: int) -> list[int]:
    """Offsets in seconds: bursts of 1-3 messages in the same second, then a 1-6 s gap."""
    times: list[int] = []
    t = 0
    while len(times) < count:
        times.extend([t] * min(rng.randint(1, 3), count - len(times)))
        t += rng.randint(1, 6)
    return times


def _draft(rng: random.Random, created_at: int, index: int, assistant: str) -> DraftMessage:
    role = "user" if index % 2 == 0 or rng.random() < 0.15 else "assistant"
    text = text_value(rng)
    part: dict[str, Any] = {"type": "text", "text": {"value": text, "annotations": []}}
    content = [part]
    draft = DraftMessage(created_at=created_at, role=role, content=content)
    draft.metadata = metadata(rng)
    if role == "assistant":
        draft.assistant_id = assistant
        draft.run_id = new_id("run_", rng)
        draft.completed_at = created_at + rng.randint(0, 4)
        part["text"]["annotations"] = make_annotations(rng, text)
        if rng.random() < 0.1:
            content.append({"type": "image_file", "image_file": {"file_id": new_id("file-", rng)}})
    else:
        if rng.random() < 0.15:
            content.insert(
                0, {"type": "image_file", "image_file": {"file_id": new_id("file-", rng)}}
            )
        if rng.random() < 0.2:
            tool = rng.choice(["code_interpreter", "file_search"])
            draft.attachments = [{"file_id": new_id("file-", rng), "tools": [{"type": tool}]}]
    return draft


def _finish_statuses(rng: random.Random, drafts: list[DraftMessage]) -> None:
    assistants = [d for d in drafts if d.role == "assistant"]
    for draft in assistants[:-1]:
        if rng.random() < 0.05:
            draft.status = "incomplete"
            draft.incomplete_details = {"reason": rng.choice(_REASONS)}
            draft.incomplete_at, draft.completed_at = draft.completed_at, None
    # The newest assistant message is the one a run could still be writing.
    if assistants and rng.random() < 0.3:
        last = assistants[-1]
        last.status = "in_progress"
        last.completed_at = None
