"""Markdown: one readable transcript per thread, oldest message first.

Each message is a heading with who and when, its text with citation markers replaced by footnote
references (``[^n]``, footnotes listed under the message), image parts and attachments named by
file id. A message the server no longer lists (exported with ``--include-deleted``) is marked
``(deleted <when>)`` in its heading and quoted, so it cannot be mistaken for live content.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO, Any

from worker.export.source import Row
from worker.export.text import (
    Footnote,
    iso_datetime,
    iso_utc,
    part_placeholder,
    with_footnotes,
)
from worker.jsontext import loads_text

FOOTNOTE_LABEL = {"file_citation": "cited file", "file_path": "generated file"}


def thread_header(thread_id: str) -> str:
    return f"# Thread {thread_id}\n\n"


def _who(message: dict[str, Any]) -> str:
    role = str(message.get("role") or "unknown")
    if role == "assistant" and message.get("assistant_id"):
        return f"assistant ({message['assistant_id']})"
    return role


def _body(message: dict[str, Any], prefix: str) -> tuple[list[str], list[Footnote]]:
    blocks: list[str] = []
    notes: list[Footnote] = []
    for part in message.get("content") or []:
        if part.get("type") == "text":
            text = part.get("text") or {}
            value, more = with_footnotes(
                str(text.get("value", "")),
                list(text.get("annotations") or []),
                len(notes) + 1,
                prefix=prefix,
            )
            blocks.append(value)
            notes.extend(more)
        elif part.get("type") == "image_file":
            file_id = (part.get("image_file") or {}).get("file_id", "?")
            blocks.append(f"*Image:* file `{file_id}`")
        elif part.get("type") == "image_url":
            blocks.append(f"*Image:* <{(part.get('image_url') or {}).get('url', '?')}>")
        else:
            blocks.append(f"*{part_placeholder(part)}*")
    for attachment in message.get("attachments") or []:
        tools = ", ".join(str(t.get("type")) for t in attachment.get("tools") or [])
        blocks.append(f"*Attachment:* file `{attachment.get('file_id', '?')}` ({tools})")
    return blocks, notes


def message_markdown(row: Row, index: int = 1) -> str:
    """One message as a Markdown section (ends with a blank line).

    Footnote labels are document-global in Markdown, so they carry the message's position in the
    file: ``[^3.1]`` is the first citation of the third message.
    """
    message = loads_text(row.raw)
    heading = f"## {_who(message)} · {iso_utc(message.get('created_at', row.created_at))}"
    status = message.get("status")
    if status and status != "completed":
        heading += f" · {status}"
    if row.deleted_at is not None:
        heading += f" · (deleted {iso_datetime(row.deleted_at)})"
    blocks, notes = _body(message, f"{index}.")
    lines = [heading, "", f"<sub>{row.id}</sub>", ""]
    for block in blocks:
        quoted = row.deleted_at is not None
        lines.extend([_quote(block) if quoted else block, ""])
    for note in notes:
        label = FOOTNOTE_LABEL.get(note.kind, note.kind)
        quote = f' — "{note.quote}"' if note.quote else ""
        lines.append(f"[^{note.label}]: {label} `{note.file_id}`{quote}")
    if notes:
        lines.append("")
    return "\n".join(lines) + "\n"


def _quote(block: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in block.split("\n"))


def write_markdown(rows: Iterable[Row], out: IO[bytes]) -> int:
    """Transcripts of every thread in ``rows`` (rows arrive thread by thread), ``---`` between."""
    count = 0
    current: str | None = None
    for row in rows:
        if row.thread_id != current:
            if current is not None:
                out.write(b"\n---\n\n")
            out.write(thread_header(row.thread_id).encode())
            current = row.thread_id
        count += 1
        out.write(message_markdown(row, count).encode())
    return count
