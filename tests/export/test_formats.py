"""CSV and Markdown checked on content: order, roles, text, citations as footnotes, deletions."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any

import orjson

from worker.export.csv_format import COLUMNS, write_csv
from worker.export.markdown import write_markdown
from worker.export.source import Row
from worker.export.text import plain_text, with_footnotes


def message(
    mid: str,
    created: int,
    role: str,
    text: str,
    *,
    thread: str = "thread_a",
    annotations: list[dict[str, Any]] | None = None,
    extra_parts: list[dict[str, Any]] | None = None,
    attachments: list[dict[str, Any]] | None = None,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "id": mid,
        "object": "thread.message",
        "created_at": created,
        "thread_id": thread,
        "role": role,
        "status": "completed",
        "assistant_id": "asst_1" if role == "assistant" else None,
        "run_id": "run_1" if role == "assistant" else None,
        "content": [
            {"type": "text", "text": {"value": text, "annotations": annotations or []}},
            *(extra_parts or []),
        ],
        "attachments": attachments or [],
        "metadata": metadata or {},
    }


def row(obj: dict[str, Any], deleted: datetime | None = None) -> Row:
    return Row(obj["thread_id"], obj["id"], obj["created_at"], orjson.dumps(obj).decode(), deleted)


CITE = {
    "type": "file_citation",
    "text": "【4:0†source】",
    "file_citation": {"file_id": "assistant-cited"},
    "start_index": 9,
    "end_index": 21,
}
PATH = {
    "type": "file_path",
    "text": "sandbox:/out.csv",
    "file_path": {"file_id": "file-out"},
    "start_index": 0,
    "end_index": 0,  # wrong indices on purpose: found by its text instead
}


def sample() -> list[Row]:
    return [
        row(
            message(
                "msg_1",
                1_700_000_000,
                "user",
                'Hello, 日本語 — with a comma, and "quotes"\nand a newline',
                extra_parts=[{"type": "image_file", "image_file": {"file_id": "file-img"}}],
                attachments=[{"file_id": "file-att", "tools": [{"type": "file_search"}]}],
                metadata={"b": "2", "a": "1"},
            )
        ),
        row(
            message(
                "msg_2",
                1_700_000_000,
                "assistant",
                "See this 【4:0†source】 and download sandbox:/out.csv now.",
                annotations=[CITE, PATH],
            )
        ),
        row(
            message("msg_3", 1_700_000_005, "user", "gone", thread="thread_b"),
            deleted=datetime(2024, 1, 2, 3, 4, 5),
        ),
    ]


def test_footnotes_replace_markers_in_order_of_appearance() -> None:
    """Markers become [^n] where they stand (by index, else by text); unknown ones go last."""
    value = "See this 【4:0†source】 and download sandbox:/out.csv now."
    lost = {**CITE, "text": "【9:9†source】", "start_index": 0, "end_index": 0}
    text, notes = with_footnotes(value, [PATH, lost, CITE], prefix="2.")
    assert text == "See this [^2.1] and download [^2.2] now.[^2.3]"
    assert [(n.label, n.kind, n.file_id) for n in notes] == [
        ("2.1", "file_citation", "assistant-cited"),
        ("2.2", "file_path", "file-out"),
        ("2.3", "file_citation", "assistant-cited"),
    ]


def test_plain_text_joins_parts_and_names_images() -> None:
    """Text parts are kept verbatim; image parts become a placeholder naming the file id."""
    obj = orjson.loads(sample()[0].raw)
    assert plain_text(obj).endswith("and a newline\n\n[image file file-img]")


def test_csv_rows_hold_the_messages_in_order_with_their_fields() -> None:
    """Header, one record per message in the given order, ISO UTC times, joined text, counts."""
    out = io.BytesIO()
    assert write_csv(sample(), out) == 3
    records = list(csv.DictReader(io.StringIO(out.getvalue().decode("utf-8"), newline="")))
    assert list(records[0].keys()) == list(COLUMNS)
    assert [r["message_id"] for r in records] == ["msg_1", "msg_2", "msg_3"]
    assert [r["role"] for r in records] == ["user", "assistant", "user"]
    first, second, third = records
    assert first["created_at"] == "2023-11-14T22:13:20Z"
    assert first["text"] == (
        'Hello, 日本語 — with a comma, and "quotes"\nand a newline\n\n[image file file-img]'
    )
    assert first["attachments"] == "1"
    assert orjson.loads(first["metadata"]) == {"a": "1", "b": "2"}
    assert first["deleted_at"] == ""
    assert second["assistant_id"] == "asst_1"
    assert second["run_id"] == "run_1"
    assert "【4:0†source】" in second["text"]
    assert third["deleted_at"] == "2024-01-02T03:04:05Z"


def test_markdown_transcript_reads_in_order_with_footnotes_and_files() -> None:
    """Per thread a heading; per message who and when; citations as footnotes under it."""
    out = io.BytesIO()
    assert write_markdown(sample(), out) == 3
    md = out.getvalue().decode()
    assert md.index("# Thread thread_a") < md.index("msg_1") < md.index("msg_2")
    assert md.index("msg_2") < md.index("# Thread thread_b") < md.index("msg_3")
    assert "## user · 2023-11-14T22:13:20Z" in md
    assert "## assistant (asst_1) · 2023-11-14T22:13:20Z" in md
    assert "*Image:* file `file-img`" in md
    assert "*Attachment:* file `file-att` (file_search)" in md
    assert "See this [^2.1] and download [^2.2] now." in md
    assert "[^2.1]: cited file `assistant-cited`" in md
    assert "[^2.2]: generated file `file-out`" in md
    assert "【4:0†source】" not in md
    assert "## user · 2023-11-14T22:13:25Z · (deleted 2024-01-02T03:04:05Z)" in md
    assert "\n> gone\n" in md
