"""Thread messages (Assistants v2 objects) -> Conversations input items. Pure: no I/O.

The table is in README.md ("Migrating to Conversations"); in short: text goes as ``input_text``
(user) or ``output_text`` (assistant, ``file_path`` annotations kept; annotations the target cannot
hold become footnotes or are dropped); images become ``input_image`` on user items and a text
placeholder on assistant items (which hold only text and refusals); a refusal stays a ``refusal``
on an assistant item; attachments become ``input_file`` on the user item, a placeholder, or
nothing; ``created_at`` may prefix the text; metadata, run and assistant ids stay in the mirror.

Every part dropped or replaced is reported as a :class:`Change` naming the part and why.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

MAX_BATCH = 20  # items per create and per append (the spec's maxItems)
MAX_PAIRS = 16
MAX_KEY = 64
MAX_VALUE = 512

Annotations = Literal["footnote", "drop"]
Attachments = Literal["file", "placeholder", "drop"]
Timestamps = Literal["none", "prefix"]
Action = Literal["dropped", "replaced"]
Part = tuple[Any, ...]
Canonical = tuple[str, tuple[Part, ...]]


class MappingError(ValueError):
    """A message that cannot become an item at all (an unknown role, a body that is no message)."""


@dataclass(frozen=True, slots=True)
class Policy:
    """The choices the mapping leaves to the user (``[migrate]`` in the settings)."""

    annotations: Annotations = "footnote"
    attachments: Attachments = "file"
    timestamps: Timestamps = "none"


@dataclass(frozen=True, slots=True)
class Change:
    """One part of a message that did not go across as it was."""

    message_id: str
    part: str  # e.g. "content[1] image_file", "attachments[0]"
    action: Action
    reason: str


@dataclass(frozen=True, slots=True)
class Mapped:
    message_id: str
    item: dict[str, Any]
    changes: tuple[Change, ...] = field(default=())


def stamp(created_at: int) -> str:
    """``"[2026-05-01 12:00 UTC] "`` for a unix time."""
    return datetime.fromtimestamp(created_at, UTC).strftime("[%Y-%m-%d %H:%M UTC] ")


def _text_of(part: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    body = part.get("text")
    if isinstance(body, str):
        return body, []
    if isinstance(body, dict):
        notes = body.get("annotations")
        return str(body.get("value") or ""), notes if isinstance(notes, list) else []
    return "", []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _footnote(index: int, note: dict[str, Any]) -> str:
    kind = str(note.get("type"))
    ref = _dict(note.get(kind))
    marker = note.get("text") or ""
    line = f"[{index}] {marker} {kind} {ref.get('file_id', '')}".replace("  ", " ").rstrip()
    quote = ref.get("quote")
    return line + (f': "{quote}"' if quote else "")


class _Builder:
    """The parts of one item and the changes made on the way."""

    def __init__(self, message_id: str, role: str, policy: Policy) -> None:
        self.message_id = message_id
        self.role = role
        self.policy = policy
        self.parts: list[dict[str, Any]] = []
        self.changes: list[Change] = []

    def change(self, part: str, action: Action, reason: str) -> None:
        self.changes.append(Change(self.message_id, part, action, reason))

    def text(self, text: str) -> None:
        kind = "output_text" if self.role == "assistant" else "input_text"
        part: dict[str, Any] = {"type": kind, "text": text}
        if kind == "output_text":
            part["annotations"] = []
            part["logprobs"] = []  # required by OutputTextContent, though no input has any
        self.parts.append(part)

    def add_text(self, where: str, part: dict[str, Any]) -> None:
        text, notes = _text_of(part)
        kept: list[dict[str, Any]] = []
        footnotes: list[str] = []
        for j, note in enumerate(notes):
            name = f"{where}.annotations[{j}] {note.get('type')}"
            target = self._annotation(note)
            if target is not None:
                kept.append(target)
            elif self.policy.annotations == "footnote":
                footnotes.append(_footnote(len(footnotes) + 1, note))
                self.change(name, "replaced", "the target cannot hold it: written as a footnote")
            else:
                self.change(name, "dropped", "the target cannot hold it (annotations = drop)")
        if footnotes:
            text = text + "\n\n" + "\n".join(footnotes)
        self.text(text)
        if kept:
            self.parts[-1]["annotations"] = kept

    def _annotation(self, note: dict[str, Any]) -> dict[str, Any] | None:
        """The output_text annotation for ``note``, when the target's schema holds it.

        ``file_path`` becomes ``{file_id, index}``; ``file_citation`` needs a file name the
        source never had (and loses its quote), so it is not invented.
        """
        if self.role != "assistant" or note.get("type") != "file_path":
            return None
        ref = note.get("file_path")
        if not isinstance(ref, dict) or not isinstance(ref.get("file_id"), str):
            return None
        index = note.get("start_index")
        return {"type": "file_path", "file_id": ref["file_id"], "index": int(index or 0)}

    def add_image(self, where: str, kind: str, part: dict[str, Any]) -> None:
        body = _dict(part.get(kind))
        ref = body.get("file_id") if kind == "image_file" else body.get("url")
        if self.role == "assistant" or not isinstance(ref, str):
            self.text(f"[image: {ref}]")
            why = (
                "assistant items hold only text and refusals: a text placeholder"
                if self.role == "assistant"
                else "no file id or URL: a text placeholder"
            )
            self.change(f"{where} {kind}", "replaced", why)
            return
        image: dict[str, Any] = {"type": "input_image", "detail": body.get("detail") or "auto"}
        image["file_id" if kind == "image_file" else "image_url"] = ref
        self.parts.append(image)

    def add_refusal(self, where: str, part: dict[str, Any]) -> None:
        refusal = str(part.get("refusal") or "")
        if self.role == "assistant":
            self.parts.append({"type": "refusal", "refusal": refusal})
            return
        self.text(f"[refusal] {refusal}")
        self.change(f"{where} refusal", "replaced", "a user item cannot hold a refusal: as text")

    def add_attachment(self, where: str, attachment: Any) -> None:
        file_id = _dict(attachment).get("file_id")
        tools = _dict(attachment).get("tools")
        names = ", ".join(
            str(t.get("type")) for t in tools or [] if isinstance(t, dict) and t.get("type")
        )
        label = f"[attachment: {file_id}" + (f" ({names})" if names else "") + "]"
        policy = self.policy.attachments
        if policy == "file" and self.role == "user" and isinstance(file_id, str):
            self.parts.append({"type": "input_file", "file_id": file_id})
            if names:
                self.change(where, "replaced", f"input_file; the {names} binding is not history")
            return
        if policy == "drop":
            self.change(where, "dropped", "attachments = drop")
            return
        self.text(label)
        why = (
            "attachments = placeholder"
            if policy == "placeholder"
            else "assistant items cannot hold files: a text placeholder"
        )
        self.change(where, "replaced", why)


def map_message(message: dict[str, Any], policy: Policy = Policy()) -> Mapped:
    """One mirrored message object as one input item (``{"type": "message", role, content}``)."""
    message_id = str(message.get("id", ""))
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise MappingError(f"message {message_id}: role {role!r} is neither user nor assistant")
    content = message.get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": {"value": content, "annotations": []}}]
    if not isinstance(content, list):
        raise MappingError(f"message {message_id}: content is not a list of parts")
    build = _Builder(message_id, role, policy)
    for i, part in enumerate(content):
        where = f"content[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            build.add_text(where, part)
        elif kind in ("image_file", "image_url"):
            build.add_image(where, kind, part)
        elif kind == "refusal":
            build.add_refusal(where, part)
        else:
            build.text(f"[unsupported content: {kind}]")
            build.change(f"{where} {kind}", "replaced", "no Conversations equivalent is known")
    for i, attachment in enumerate(message.get("attachments") or []):
        build.add_attachment(f"attachments[{i}]", attachment)
    if policy.timestamps == "prefix" and isinstance(message.get("created_at"), int):
        _prefix(build, stamp(message["created_at"]))
    if not build.parts:
        build.text("")  # an item needs content; an empty message stays an empty message
    item = {"type": "message", "role": role, "content": build.parts}
    return Mapped(message_id, item, tuple(build.changes))


def _prefix(build: _Builder, prefix: str) -> None:
    for part in build.parts:
        if part["type"] in ("input_text", "output_text"):
            part["text"] = prefix + part["text"]
            return
    build.text(prefix.rstrip())
    build.parts.insert(0, build.parts.pop())


def chunks(items: Sequence[Mapped], size: int = MAX_BATCH) -> Iterator[Sequence[Mapped]]:
    """Consecutive batches of at most ``size`` (the service's 20), in order."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- comparing what was sent with what the target lists ---------------------------------------


def _canonical_part(role: str, part: Any) -> Part:
    if isinstance(part, str):
        return ("output_text" if role == "assistant" else "input_text", part)
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        return (kind, part.get("text"))
    if kind == "refusal":
        return (kind, part.get("refusal"))
    if kind == "input_image":
        return (kind, part.get("file_id"), part.get("image_url"))
    if kind == "input_file":
        return (kind, part.get("file_id"), part.get("file_url"))
    return (str(kind),)


def canonical(item: dict[str, Any]) -> Canonical:
    """Role and content as both sides show them: what a sent item and a listed item share.

    Server-added fields (ids, status, ``logprobs``, a default ``detail``) are left out, and so are
    annotations (whether the service keeps them on input items is not known).
    """
    role = str(item.get("role"))
    content = item.get("content")
    parts = [content] if isinstance(content, str) else content or []
    return role, tuple(_canonical_part(role, p) for p in parts)


def same_items(sent: Iterable[dict[str, Any]], listed: Iterable[dict[str, Any]]) -> bool:
    return [canonical(i) for i in sent] == [canonical(i) for i in listed]


# -- the conversation's metadata ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    """What the conversation's metadata records about its thread."""

    thread_id: str
    profile: str
    messages: int
    first_at: int | None
    last_at: int | None
    migrated_at: int
    migration_id: str
    thread_metadata: dict[str, Any] | None = None


def _iso(when: int | None) -> str:
    if when is None:
        return ""
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def conversation_metadata(source: Source) -> tuple[dict[str, str], list[str]]:
    """The conversation's metadata and the thread metadata keys left out, with why.

    Seven keys of provenance first (``source_thread_id``, ``source_profile``,
    ``source_messages``, ``source_first_at``, ``source_last_at``, ``migrated_at``,
    ``migration_id``), then the thread's own pairs in key order while the 16 pairs last; a
    thread key that collides with ours, or breaks the key/value limits, is left out and named.
    """
    metadata = {
        "source_thread_id": source.thread_id[:MAX_VALUE],
        "source_profile": source.profile,
        "source_messages": str(source.messages),
        "source_first_at": _iso(source.first_at),
        "source_last_at": _iso(source.last_at),
        "migrated_at": _iso(source.migrated_at),
        "migration_id": source.migration_id,
    }
    left_out: list[str] = []
    for key, value in sorted((source.thread_metadata or {}).items()):
        if key in metadata:
            left_out.append(f"{key}: the name is taken by the provenance keys")
        elif not isinstance(value, str) or len(key) > MAX_KEY or len(value) > MAX_VALUE:
            left_out.append(f"{key}: beyond the key/value limits")
        elif len(metadata) >= MAX_PAIRS:
            left_out.append(f"{key}: no room left in the 16 pairs")
        else:
            metadata[key] = value
    return metadata, left_out
