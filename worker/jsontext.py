"""JSON for API objects: orjson, and a faithful fallback for what orjson refuses.

JSON may carry an escaped lone surrogate (``"\\ud800"``): the grammar allows any ``\\uXXXX``, and
a server that cuts a string between the halves of a pair sends one. orjson refuses such text (and
a ``str`` holding a lone surrogate), so a message carrying one could never be mirrored. Here such
text is read by the standard library instead, and written back with each lone surrogate as the
same ``\\uXXXX`` escape: the bytes stay valid UTF-8, and plain ASCII where the character is, so
every database stores them (PostgreSQL's text cannot hold U+0000 or a surrogate, but holds their
escapes). Everything orjson accepts goes through orjson, unchanged, at orjson's speed.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_SURROGATE = re.compile("[\ud800-\udfff]")


class JsonTextError(ValueError):
    """Text that is not JSON (after both parsers had their say)."""

    def __init__(self, msg: str, pos: int) -> None:
        super().__init__(f"{msg} at {pos}")
        self.msg = msg
        self.pos = pos


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(data: bytes | str) -> Any:
    """Parse JSON text as orjson does; text with an escaped lone surrogate is accepted too."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        first = exc
    try:
        text = data.decode() if isinstance(data, bytes) else data
        # The standard library is laxer than JSON (NaN, Infinity): those stay refused.
        return json.loads(text, parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError):
        raise JsonTextError(first.msg, first.pos) from first


def loads_text(data: bytes | str) -> Any:
    """Parse as :func:`loads`, each lone surrogate read as U+FFFD: for outputs that must be UTF-8
    text (CSV, Markdown, Parquet), which cannot hold one. JSONL keeps the escapes instead."""
    try:
        return orjson.loads(data)  # no lone surrogate: orjson would have refused it
    except orjson.JSONDecodeError:
        return _replaced(loads(data))


def _replaced(value: Any) -> Any:
    if isinstance(value, str):
        return value if value.isascii() else _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replaced(item) for item in value]
    if isinstance(value, dict):
        return {_replaced(k): _replaced(v) for k, v in value.items()}
    return value


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def dumps(obj: Any) -> bytes:
    """Serialise compactly as orjson does; a ``str`` holding a lone surrogate is written with
    that surrogate escaped (``\\ud800``), so the result reads back equal with :func:`loads`."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        # Outside strings JSON text is ASCII, so every surrogate here is inside a string.
        return _SURROGATE.sub(_escape, text).encode()


def column_text(value: Any) -> str | None:
    """A string field's value for a query column (role, status, ...), or None if not a string.

    U+0000 and lone surrogates, which PostgreSQL's text cannot hold (nor any UTF-8 text the
    surrogates), read as U+FFFD there, on every backend alike (a backup and its restore keep the
    same columns). The message itself, ``raw``, keeps them exactly.
    """
    if type(value) is not str:
        return None
    text: str = value
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if text.isascii():  # the usual case, and the cheap test (once per field of every message)
        return text
    return _SURROGATE.sub("\ufffd", text)
