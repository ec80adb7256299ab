"""Reading a message object for people: its text parts joined, citations turned into footnotes.

Pure functions over the API object (a ``dict`` parsed from the stored raw JSON). Unknown part types
are named rather than dropped, so a transcript never silently loses content.

The readable formats take anything the mirror can hold, not only what the client now accepts:
rows written by older versions, parts of types not yet known, fields of unexpected shapes. Each
value is read through :func:`as_dict`, :func:`as_list` or :func:`field_text`, so an odd shape is
shown as it is (or as empty) and never fails an export.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from worker.jsontext import loads_text

PART_SEPARATOR = "\n\n"


def message_of(raw: str | bytes) -> dict[str, Any]:
    """The stored object as a dict; a stored value that is not a JSON object reads as empty
    (the row's own columns still give its thread, id and time)."""
    try:
        value = loads_text(raw)  # a lone surrogate reads as U+FFFD: UTF-8 outputs cannot hold it
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def field_text(value: Any) -> str:
    """A field as text: a string as it is, null as empty, any other value as its JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return orjson.dumps(value).decode()


def seconds_of(message: dict[str, Any], stored: int) -> int:
    """The message's ``created_at``, or the stored column when the object's is not an integer."""
    value = message.get("created_at")
    return value if type(value) is int else stored


def utc_of(seconds: int) -> datetime | None:
    """Unix seconds as an aware UTC datetime; None when out of the calendar's range."""
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Footnote:
    """One citation: ``kind`` is ``file_citation`` or ``file_path``."""

    label: str
    kind: str
    file_id: str
    quote: str | None = None


def iso_utc(seconds: int | None) -> str:
    """Unix seconds as ISO 8601 UTC (``2023-11-14T22:13:20Z``); empty for None."""
    if seconds is None:
        return ""
    when = utc_of(seconds)
    return str(seconds) if when is None else when.strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_datetime(value: datetime | None) -> str:
    """A stored timestamp (naive means UTC, as SQLite returns them) as ISO 8601 UTC."""
    if value is None:
        return ""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def part_placeholder(part: Any) -> str:
    """How a non-text part reads in flat text."""
    if not isinstance(part, dict):
        return f"[{_kind(part)} part]"
    kind = part.get("type")
    if kind == "image_file":
        return f"[image file {field_text(as_dict(part.get('image_file')).get('file_id', '?'))}]"
    if kind == "image_url":
        return f"[image {field_text(as_dict(part.get('image_url')).get('url', '?'))}]"
    if kind == "refusal":
        return f"[refusal] {field_text(part.get('refusal'))}"
    return f"[{field_text(kind) or 'unknown'} part]"


def _kind(value: Any) -> str:
    return "unknown" if value is None else type(value).__name__


def parts_of(message: dict[str, Any]) -> list[Any]:
    """The message's content parts; a content stored as a plain string is one text part."""
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": {"value": content, "annotations": []}}]
    return as_list(content)


def text_of_part(part: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """A text part's value and its annotations (the objects among them); a ``text`` given as a
    plain string, as create-message requests write it, is that string."""
    text = part.get("text")
    if isinstance(text, str):
        return text, []
    text = as_dict(text)
    notes = [note for note in as_list(text.get("annotations")) if isinstance(note, dict)]
    return field_text(text.get("value")), notes


def plain_text(message: dict[str, Any]) -> str:
    """Every part in order, text as written (citation markers kept), others as placeholders."""
    pieces: list[str] = []
    for part in parts_of(message):
        if isinstance(part, dict) and part.get("type") == "text":
            pieces.append(text_of_part(part)[0])
        elif isinstance(part, str):
            pieces.append(part)
        else:
            pieces.append(part_placeholder(part))
    return PART_SEPARATOR.join(pieces)


def _span(value: str, note: dict[str, Any]) -> tuple[int, int] | None:
    """Where an annotation's marker sits in ``value``: its stated indices if they match, else the
    first occurrence of its text; None when the marker is not in the text at all."""
    marker = note.get("text")
    marker = marker if isinstance(marker, str) else ""
    start, end = note.get("start_index"), note.get("end_index")
    if marker and isinstance(start, int) and isinstance(end, int) and value[start:end] == marker:
        return start, end
    found = value.find(marker) if marker else -1
    return (found, found + len(marker)) if found >= 0 else None


def with_footnotes(
    value: str, annotations: list[dict[str, Any]], first: int = 1, *, prefix: str = ""
) -> tuple[str, list[Footnote]]:
    """Replace each citation marker by ``[^<prefix>n]`` (n from ``first``, in order of appearance).

    A marker that cannot be found in the text gets its reference appended at the end, so a
    citation is never lost.
    """
    placed: list[tuple[int, int, dict[str, Any]]] = []
    trailing: list[dict[str, Any]] = []
    taken: list[tuple[int, int]] = []
    for note in (note for note in annotations if isinstance(note, dict)):
        span = _span(value, note)
        if span is None or any(s < span[1] and span[0] < e for s, e in taken):
            trailing.append(note)
        else:
            taken.append(span)
            placed.append((span[0], span[1], note))
    placed.sort(key=lambda p: p[0])
    notes: list[Footnote] = []
    out: list[str] = []
    cursor = 0
    for start, end, note in placed:
        notes.append(_footnote(f"{prefix}{first + len(notes)}", note))
        out.append(value[cursor:start])
        out.append(f"[^{notes[-1].label}]")
        cursor = end
    out.append(value[cursor:])
    for note in trailing:
        notes.append(_footnote(f"{prefix}{first + len(notes)}", note))
        out.append(f"[^{notes[-1].label}]")
    return "".join(out), notes


def _footnote(label: str, note: dict[str, Any]) -> Footnote:
    kind = field_text(note.get("type", "citation"))
    target = as_dict(note.get(kind))
    quote = target.get("quote")
    return Footnote(
        label,
        kind,
        field_text(target.get("file_id", "?")),
        quote if isinstance(quote, str) else None,
    )
