"""Value models for API answers: a page of messages and single objects, parsed with orjson.

Messages stay plain dicts exactly as parsed (key order and unknown fields preserved): the mirror
keeps the object as received, so nothing here may drop or reshape a field. A body that is not
valid JSON, or not the expected shape, raises :class:`TransientError`: truncated bodies happen on
dropped connections, and the request is retried like any other transient failure. A well-formed
body holding a message that breaks the contract raises :class:`~worker.errors.MalformedError`
(see :mod:`worker.client.messages`): the same request would get the same answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from hashlib import sha256
from typing import Any, NamedTuple

from worker.client.messages import check_message, check_page
from worker.errors import TransientError
from worker.jsontext import JsonTextError, loads


@dataclass(frozen=True)
class MessagePage:
    """One list answer. ``first_id``/``last_id`` are the server's when given, else taken from
    ``data`` (Foundry omits ``first_id``; an empty page has neither)."""

    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


def _invalid(why: str) -> TransientError:
    return TransientError(f"invalid JSON/shape: {why}")


def parse_json(body: bytes) -> Any:
    """Decode a body; anything undecodable is a transient failure (the body was likely cut).

    An escaped lone surrogate is JSON, and is kept (see ``worker/jsontext.py``)."""
    try:
        return loads(body)
    except JsonTextError as exc:
        raise _invalid(f"{exc.msg} at byte {exc.pos} of {len(body)}") from exc


def parse_object(body: bytes) -> dict[str, Any]:
    """A single JSON object answer (a message, a thread, a deletion status)."""
    value = parse_json(body)
    if not isinstance(value, dict):
        raise _invalid(f"expected an object, got {type(value).__name__}")
    return value


def _optional_id(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _invalid(f"{name} is {type(value).__name__}, wanted a string or null")


def parse_page(
    body: bytes, check: Callable[[list[Any]], list[dict[str, Any]]] | None = None
) -> MessagePage:
    """A list answer: ``data`` (objects with string ids), ``has_more``, optional ids.

    ``check`` first judges (and may reduce) ``data``: a message listing's contract check.
    """
    value = parse_object(body)
    data = value.get("data")
    if not isinstance(data, list):
        raise _invalid("data is missing or not a list")
    if check is not None:
        data = check(data)
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise _invalid("an item of data is not an object with a string id")
    has_more = value.get("has_more")
    if has_more is None:
        # Only an empty page can leave the question open: there is nothing after nothing.
        if data:
            raise _invalid("has_more is missing on a non-empty page")
        has_more = False
    if not isinstance(has_more, bool):
        raise _invalid(f"has_more is {type(has_more).__name__}, wanted a boolean")
    first_id = _optional_id(value.get("first_id"), "first_id")
    last_id = _optional_id(value.get("last_id"), "last_id")
    if data:
        first_id = first_id or data[0]["id"]
        last_id = last_id or data[-1]["id"]
    return MessagePage(data=data, first_id=first_id, last_id=last_id, has_more=has_more)


def message_page(thread_id: str) -> Callable[[bytes], MessagePage]:
    """A parser of ``thread_id``'s message listings: each message checked against the contract
    (:func:`~worker.client.messages.check_page`), each id once."""

    def check(data: list[Any]) -> list[dict[str, Any]]:
        return check_page(data, thread_id)

    def parse(body: bytes) -> MessagePage:
        return parse_page(body, check)

    return parse


def message_object(thread_id: str, message_id: str | None = None) -> Callable[[bytes], Any]:
    """A parser of one message of ``thread_id`` (``message_id``: the one asked for)."""

    def parse(body: bytes) -> dict[str, Any]:
        obj = parse_object(body)
        check_message(obj, thread_id, message_id=message_id)
        return obj

    return parse


class Listed(NamedTuple):
    """A list answer with the SHA-256 of its body: parsed (``page``), or, when the body is the
    one the caller expected, left unparsed (``page`` None, ``body`` kept)."""

    page: MessagePage | None
    body: bytes | None
    sha: bytes


def page_unless(expected: bytes | None, thread_id: str) -> Callable[[bytes], Listed]:
    """A parser of ``thread_id``'s listings (as :func:`message_page`) that skips the parsing of
    a body whose SHA-256 is ``expected``.

    A full walk of a thread nothing has changed in lists, byte for byte, what it listed last
    time; hashing such a body costs a small fraction of parsing it (see ``worker/sync/memo.py``).
    """

    parse_messages = message_page(thread_id)

    def parse(body: bytes) -> Listed:
        sha = sha256(body).digest()
        if sha == expected:
            return Listed(None, body, sha)
        return Listed(parse_messages(body), None, sha)

    return parse
