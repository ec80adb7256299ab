"""Page and object parsing: tolerant of missing ids, strict on shape, faithful to unknown fields."""

from __future__ import annotations

import orjson
import pytest

from worker.client.models import MessagePage, parse_object, parse_page
from worker.errors import TransientError


def test_full_page() -> None:
    """A complete list body parses to its fields."""
    body = (
        b'{"object":"list","data":[{"id":"a"},{"id":"b"}],'
        b'"first_id":"a","last_id":"b","has_more":true}'
    )
    assert parse_page(body) == MessagePage(
        data=[{"id": "a"}, {"id": "b"}], first_id="a", last_id="b", has_more=True
    )


def test_foundry_page_without_first_id_or_object() -> None:
    """Foundry omits object and first_id: ids come from data."""
    page = parse_page(b'{"data":[{"id":"a"},{"id":"b"}],"last_id":"b","has_more":false}')
    assert (page.first_id, page.last_id, page.has_more) == ("a", "b", False)


@pytest.mark.parametrize(
    "body",
    [
        b'{"object":"list","data":[],"first_id":null,"last_id":null,"has_more":false}',
        b'{"data":[]}',
    ],
)
def test_empty_page(body: bytes) -> None:
    """An empty page may carry null ids and even omit has_more."""
    assert parse_page(body) == MessagePage(data=[], first_id=None, last_id=None, has_more=False)


@pytest.mark.parametrize(
    "body",
    [
        b'{"data":[{"id":"a"},{"id":"b"}',  # truncated
        b"",
        b"<html>bad gateway</html>",
        b"[]",
        b'{"has_more":false}',
        b'{"data":{"id":"a"},"has_more":false}',
        b'{"data":[{"id":1}],"has_more":false}',
        b'{"data":["a"],"has_more":false}',
        b'{"data":[{"id":"a"}]}',  # has_more missing on a non-empty page
        b'{"data":[{"id":"a"}],"has_more":"yes"}',
        b'{"data":[{"id":"a"}],"has_more":true,"last_id":5}',
    ],
)
def test_bad_pages_are_transient(body: bytes) -> None:
    """Broken or mis-shaped bodies raise TransientError so the request is retried."""
    with pytest.raises(TransientError, match="invalid JSON/shape"):
        parse_page(body)


def test_unknown_fields_and_key_order_kept() -> None:
    """Message objects come back exactly as sent: legacy and future fields, same key order."""
    message = {
        "zeta": 1,
        "id": "msg_1",
        "file_ids": ["f1"],
        "content": [{"type": "text", "text": {"value": "hi", "annotations": []}}],
        "future": {"nested": [1, 2, None]},
        "metadata": {"b": "2", "a": "1"},
    }
    page = parse_page(orjson.dumps({"data": [message], "has_more": False}))
    assert page.data == [message]
    assert list(page.data[0]) == list(message)
    assert list(page.data[0]["metadata"]) == ["b", "a"]


def test_parse_object_rejects_non_objects() -> None:
    """A single-object answer must be a JSON object."""
    assert parse_object(b'{"id":"x"}') == {"id": "x"}
    with pytest.raises(TransientError):
        parse_object(b'["x"]')
