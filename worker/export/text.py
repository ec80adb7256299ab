"""Reading a message object for people: its text parts joined, citations turned into footnotes.

Pure functions over the API object (a ``dict`` parsed from the stored raw JSON). Unknown part types
are named rather than dropped, so a transcript never silently loses content.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

PART_SEPARATOR = "\n\n"


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
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_datetime(value: datetime | None) -> str:
    """A stored timestamp (naive means UTC, as SQLite returns them) as ISO 8601 UTC."""
    if value is None:
        return ""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def part_placeholder(part: dict[str, Any]) -> str:
    """How a non-text part reads in flat text."""
    kind = part.get("type")
    if kind == "image_file":
        return f"[image file {part.get('image_file', {}).get('file_id', '?')}]"
    if kind == "image_url":
        return f"[image {part.get('image_url', {}).get('url', '?')}]"
    if kind == "refusal":
        return f"[refusal] {part.get('refusal', '')}"
    return f"[{kind} part]"


def plain_text(message: dict[str, Any]) -> str:
    """Every part in order, text as written (citation markers kept), others as placeholders."""
    pieces: list[str] = []
    for part in message.get("content") or []:
        if part.get("type") == "text":
            pieces.append(str((part.get("text") or {}).get("value", "")))
        else:
            pieces.append(part_placeholder(part))
    return PART_SEPARATOR.join(pieces)


def _span(value: str, note: dict[str, Any]) -> tuple[int, int] | None:
    """Where an annotation's marker sits in ``value``: its stated indices if they match, else the
    first occurrence of its text; None when the marker is not in the text at all."""
    marker = note.get("text") or ""
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
    for note in annotations:
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
    kind = str(note.get("type", "citation"))
    target = note.get(kind) or {}
    return Footnote(label, kind, str(target.get("file_id", "?")), target.get("quote"))
