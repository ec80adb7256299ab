"""The JSON seam: orjson's bytes where orjson can, and lone surrogates kept where it cannot."""

from __future__ import annotations

import json

import orjson
import pytest

from worker.jsontext import JsonTextError, column_text, dumps, loads


def test_orjson_output_unchanged_for_what_orjson_accepts() -> None:
    obj = {"b": "nul \x00 astral \U0001f9f5", "a": [1, 2.5, None, True]}
    assert dumps(obj) == orjson.dumps(obj)
    assert b"\\u0000" in dumps(obj)  # NUL goes out as its ASCII escape


def test_lone_surrogates_round_trip_as_escapes() -> None:
    text = b'{"t":"a\\ud800b","u":"\\udfff","pair":"\\ud83d\\ude00","n":"\\u0000"}'
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(text)
    obj = loads(text)
    assert obj == {"t": "a\ud800b", "u": "\udfff", "pair": "\U0001f600", "n": "\x00"}
    out = dumps(obj)
    out.decode("utf-8")  # valid UTF-8: any database's text holds it
    assert b"\\ud800" in out
    assert b"\\udfff" in out
    assert loads(out) == obj
    assert json.loads(out) == obj


def test_not_json_is_still_refused() -> None:
    for bad in (b'{"a":', b"[NaN]", b"Infinity", b"\xff", b'"\\u12"'):
        with pytest.raises(JsonTextError):
            loads(bad)


def test_column_text_replaces_what_postgresql_cannot_hold() -> None:
    assert column_text("user") == "user"
    assert column_text("us\x00er") == "us\ufffder"
    assert column_text("a\ud800 \U0001f9f5") == "a\ufffd \U0001f9f5"
    assert column_text(3) is None
    assert column_text(None) is None
