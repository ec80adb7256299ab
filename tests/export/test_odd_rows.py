"""No exporter fails on anything the mirror can hold (issue 16, point 7).

The client now refuses malformed messages, but the mirror may hold rows written by older
versions, parts of types not known yet, and odd shapes anywhere a reader looks. Every format must
write them all: shown as they are, or left empty, never an ``AttributeError``.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from typer.testing import CliRunner

from worker.cli.app import app
from worker.export.csv_format import COLUMNS, write_csv
from worker.export.jsonl import DELETED_KEY, write_jsonl
from worker.export.markdown import write_markdown
from worker.export.source import Row
from worker.export.text import plain_text
from worker.store.db import Mirror
from worker.store.repo import add_threads

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
_KEYS = [
    *("type", "text", "value", "annotations", "image_file", "image_url", "refusal", "file_id"),
    *("url", "file_citation", "file_path", "quote", "start_index", "end_index", "tools"),
]
# Objects made of the keys the readers look for, with any values: odd shapes where it matters.
_shaped = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(_KEYS), inner | st.sampled_from(_KEYS), max_size=4)
    ),
    max_leaves=12,
)
_message = st.fixed_dictionaries(
    {},
    optional={
        "id": _json,
        "object": _json,
        "created_at": _json | st.integers(),  # beyond 64 bits too: older rows, any text
        "thread_id": _json,
        "role": st.sampled_from(["user", "assistant"]) | _json,
        "status": st.sampled_from(["completed", "in_progress"]) | _json,
        "assistant_id": _json,
        "run_id": _json,
        "content": st.lists(_shaped, max_size=4) | _shaped,
        "attachments": st.lists(_shaped, max_size=3) | _shaped,
        "metadata": st.dictionaries(st.text(max_size=5), _json, max_size=3) | _json,
        "file_ids": _json,
    },
)


def _row(raw: str, deleted: bool) -> Row:
    when = datetime(2026, 11, 28, 4, 0, tzinfo=UTC) if deleted else None
    return Row("thread_a", "msg_a", 1699016383, raw, when)


def _every_format(rows: list[Row]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, write in (("jsonl", write_jsonl), ("csv", write_csv), ("md", write_markdown)):
        buffer = io.BytesIO()
        assert write(rows, buffer) == len(rows)
        out[name] = buffer.getvalue()
    try:
        from worker.export.parquet import write_parquet  # noqa: PLC0415 - the optional extra
    except ImportError:  # pragma: no cover - pyarrow is in the dev lock
        return out
    buffer = io.BytesIO()
    assert write_parquet(rows, buffer) == len(rows)
    out["parquet"] = buffer.getvalue()
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(_message, _json),
    st.booleans(),
)
def test_no_exporter_raises_on_any_stored_object(obj: Any, deleted: bool) -> None:
    raw = json.dumps(obj, ensure_ascii=False)  # any integer: the stored text is not orjson's
    written = _every_format([_row(raw, deleted)])
    line = json.loads(written["jsonl"])  # still one valid JSON line
    if deleted:
        assert DELETED_KEY in line
    else:
        assert line == obj
    cells = list(csv.reader(io.StringIO(written["csv"].decode())))
    assert cells[0] == list(COLUMNS)
    assert cells[1][:2] == ["thread_a", "msg_a"]
    assert b"msg_a" in written["md"]


ODD: list[dict[str, Any]] = [
    {"content": "a plain string, as create-message requests give it", "role": "user"},
    {"content": [{"type": "text", "text": "a text part as a string"}]},
    {"content": ["a bare string part", 7, None, {"no": "type"}]},
    {"content": [{"type": "text", "text": {"value": "v", "annotations": ["x", {"type": 1}]}}]},
    {"content": [{"type": "image_file", "image_file": "file-1"}, {"type": "image_url"}]},
    {"metadata": ["a", "list"], "attachments": {"not": "a list"}, "status": {"odd": True}},
    {"attachments": [None, {"tools": [None, "x", {"type": "file_search"}]}, "file-9"]},
    {"created_at": 10**20, "role": ["user"], "assistant_id": 3, "run_id": {}},
    {},
]


@pytest.mark.parametrize("obj", ODD, ids=range(len(ODD)))
def test_odd_rows_are_shown_not_dropped(obj: dict[str, Any]) -> None:
    """The shapes that made the CSV and Markdown exports crash before are written readably."""
    written = _every_format([_row(json.dumps(obj), True)])
    assert json.loads(written["jsonl"])[DELETED_KEY] == {"deleted_at": "2026-11-28T04:00:00Z"}
    text = plain_text(obj)
    content = obj.get("content")
    if isinstance(content, str):
        assert text == content
        assert content.encode() in written["md"]


def test_a_stored_value_that_is_not_an_object_keeps_its_deleted_mark() -> None:
    written = _every_format([_row('["x"]', True), _row("{}", True)])
    lines = [orjson.loads(line) for line in written["jsonl"].splitlines()]
    assert lines == [
        {DELETED_KEY: {"deleted_at": "2026-11-28T04:00:00Z"}, "value": ["x"]},
        {DELETED_KEY: {"deleted_at": "2026-11-28T04:00:00Z"}},
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "markdown", "parquet"])
def test_every_format_exports_odd_rows_from_the_mirror(
    mirror: Mirror, mirror_url: str, tmp_path: Path, fmt: str
) -> None:
    """Rows as an older version could have stored them, on SQLite and PostgreSQL, through the
    export command: exit 0, every row written, deleted ones included."""
    with mirror.write() as session:
        add_threads(session, ["thread_a"])
        for n, obj in enumerate(ODD):
            raw = orjson.dumps({**obj, "created_at": 5} if "created_at" in obj else obj).decode()
            session.execute(
                text(
                    "INSERT INTO message (id, thread_id, created_at, tie_rank, raw, digest,"
                    " first_seen_at, updated_at, deleted_at)"
                    " VALUES (:id, 'thread_a', :n, 0, :raw, 'x', :now, :now, :gone)"
                ),
                {"id": f"msg_{n}", "n": n, "raw": raw, "now": datetime.now(UTC),
                 "gone": datetime.now(UTC) if n % 2 else None},
            )  # fmt: skip
    out = tmp_path / f"odd.{fmt}"
    result = CliRunner().invoke(
        app,
        ["--database-url", mirror_url, "export", "-f", fmt, "-o", str(out), "--include-deleted"],
    )
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    if fmt == "jsonl":
        assert len(data.splitlines()) == len(ODD)
    elif fmt == "csv":
        assert len(list(csv.reader(io.StringIO(data.decode())))) == len(ODD) + 1
    elif fmt == "markdown":
        assert all(f"msg_{n}".encode() in data for n in range(len(ODD)))
