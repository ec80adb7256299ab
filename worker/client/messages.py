"""Checking message objects against the wire contract before anything of them reaches the mirror.

Every message the client lists, fetches, creates or modifies passes :func:`check_message`: the
fields the contract guarantees and the mirror, the cursor logic and the exporters rely on (``id``,
``object``, ``created_at``, ``thread_id`` equal to the thread asked about, ``role``, ``content`` as
a list of part objects with a string ``type``, ``metadata`` a map of strings or null, and the
optional string fields). Unknown fields and unknown part types are kept as they are: a newer
service may add either. A message that breaks the contract raises :class:`MalformedError` naming
the field and the message id, never a value (values can be conversation content).

Within one page, a message listed twice is kept once: the later copy, at its own place, so the
page's last id (the next cursor) is the server's. Each such id is logged once as a warning.

This runs on every message of a first sync (100,000 for a large thread), so the common path is
one function of short-circuiting exact type checks on the parsed dicts (:func:`is_valid`); the
slow, thorough :func:`explain` runs only once something is wrong. Its cost per message on the
event loop is in the README, "Benchmarks".
"""

from __future__ import annotations

import re
from itertools import repeat
from typing import Any, cast

from worker.errors import MalformedError
from worker.logs import get_logger

log = get_logger()

ROLES = ("user", "assistant")
_OPTIONAL_STRINGS = ("status", "assistant_id", "run_id")
_STRINGS = frozenset((str,))
_DICTS = frozenset((dict,))
_ID_LIKE = re.compile(r"[\w.:@+=-]{1,200}", re.ASCII)
# The part types the contract defines, and the type of the payload each carries under its name.
_PAYLOADS: dict[str, type] = {"text": dict, "image_file": dict, "image_url": dict, "refusal": str}


def _kind(value: Any) -> str:
    """A value's JSON kind, for messages (never the value itself)."""
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _shown(value: str) -> str:
    """An id from the server as an error shows it: as it is when it looks like an id, otherwise
    only its length (a hostile server could put anything in an id field)."""
    if _ID_LIKE.fullmatch(value):
        return value
    return f"<an id of {len(value)} characters that does not look like one>"


def _bad(thread_id: str, index: int | None, message_id: str | None, what: str) -> MalformedError:
    """The error for a malformed message, built only when one is found (never on the hot path)."""
    who = f"message {_shown(message_id)}" if message_id is not None else "a message"
    place = f" (item {index} of a page)" if index is not None else ""
    return MalformedError(f"thread {thread_id}: {who}{place} from the server is malformed: {what}")


def is_valid(obj: Any, thread_id: str) -> bool:
    """Whether ``obj`` is a well-formed message of ``thread_id``: the hot path, one call per
    message listed, written as short-circuiting exact type checks with nothing built (reading
    the fields in one ``map`` and looking their types up as a tuple is slower)."""
    if type(obj) is not dict:
        return False
    get = obj.get
    mid = get("id")
    if (
        type(mid) is not str
        or not mid
        or get("object") != "thread.message"
        or type(get("created_at")) is not int  # bool is not int here, as it should be
        or get("thread_id") != thread_id
    ):
        return False
    role = get("role")
    if role not in ROLES:  # a tuple: compared by ==, so an unhashable role is no error
        return False
    content = get("content")
    if type(content) is not list:
        return False
    for part in content:
        if type(part) is not dict:
            return False
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if type(text) is not dict or type(text.get("value")) is not str:
                return False
            notes = text.get("annotations")
            if notes is not None and (
                type(notes) is not list or (notes and not _DICTS.issuperset(map(type, notes)))
            ):
                return False
        elif type(kind) is not str or (
            kind in _PAYLOADS and type(part.get(kind)) is not _PAYLOADS[kind]
        ):
            return False
    metadata = get("metadata")
    if metadata is not None:
        if type(metadata) is not dict:
            return False
        # The value types collected in C: a loop here cost a third of the check (16 pairs).
        if metadata and not _STRINGS.issuperset(map(type, metadata.values())):
            return False
    status, assistant_id, run_id, attachments = (
        get("status"),
        get("assistant_id"),
        get("run_id"),
        get("attachments"),
    )
    return (
        (status is None or type(status) is str)
        and (assistant_id is None or type(assistant_id) is str)
        and (run_id is None or type(run_id) is str)
        and (attachments is None or type(attachments) is list)
    )


def check_message(obj: Any, thread_id: str, *, message_id: str | None = None) -> str:
    """Check one message object of ``thread_id``; returns its id. ``message_id``: when the object
    answers a request for one message, the id it must carry."""
    if is_valid(obj, thread_id) and (message_id is None or obj["id"] == message_id):
        return cast(str, obj["id"])
    raise explain(obj, thread_id, None, message_id)


def explain(obj: Any, thread_id: str, index: int | None, message_id: str | None) -> MalformedError:
    """The error saying what is wrong with a message :func:`is_valid` rejected.

    Slow and thorough, since it only runs for a message already found malformed; it must reject
    exactly what :func:`is_valid` rejects (a property test holds them together).
    """
    where = (thread_id, index)
    if type(obj) is not dict:
        return _bad(*where, message_id, f"object is {_kind(obj)}, not an object")
    get = obj.get
    mid = get("id")
    if type(mid) is not str or not mid:
        return _bad(*where, message_id, f"id is {_kind(mid) if mid != '' else 'empty'}")
    if message_id is not None and mid != message_id:
        return _bad(*where, message_id, f"id is {_shown(mid)}, not the message asked for")
    if get("object") != "thread.message":
        return _bad(*where, mid, 'object is not "thread.message"')
    if type(get("created_at")) is not int:  # bool is not int here, as it should be
        return _bad(*where, mid, f"created_at is {_kind(get('created_at'))}, not an integer")
    owner = get("thread_id")
    if owner != thread_id:
        what = f"is {_kind(owner)}" if type(owner) is not str else f"names thread {_shown(owner)}"
        return _bad(*where, mid, f"thread_id {what}, not {thread_id}")
    role = get("role")
    if type(role) is not str or role not in ROLES:
        what = f"is {_kind(role)}" if type(role) is not str else "is not user or assistant"
        return _bad(*where, mid, f"role {what}")
    content = get("content")
    if type(content) is not list:
        return _bad(*where, mid, f"content is {_kind(content)}, not a list of parts")
    for n, part in enumerate(content):
        if type(part) is not dict:
            return _bad(*where, mid, f"content[{n}] is {_kind(part)}, not an object")
        kind = part.get("type")
        if type(kind) is not str:
            return _bad(*where, mid, f"content[{n}].type is {_kind(kind)}, not a string")
        if kind in _PAYLOADS:
            error = _check_part(part, kind, f"content[{n}]", where, mid)
            if error is not None:
                return error
    metadata = get("metadata")
    if metadata is not None:
        if type(metadata) is not dict:
            return _bad(*where, mid, f"metadata is {_kind(metadata)}, not an object or null")
        for value in metadata.values():
            if type(value) is not str:
                return _bad(*where, mid, f"metadata holds {_kind(value)} value, not a string")
    for name in _OPTIONAL_STRINGS:
        value = get(name)
        if value is not None and type(value) is not str:
            return _bad(*where, mid, f"{name} is {_kind(value)}, not a string or null")
    attachments = get("attachments")
    if attachments is not None and type(attachments) is not list:
        return _bad(*where, mid, f"attachments is {_kind(attachments)}, not a list or null")
    raise AssertionError("explain() found nothing wrong with a message is_valid() rejected")


def _check_part(
    part: dict[str, Any], kind: str, name: str, where: tuple[str, int | None], mid: str
) -> MalformedError | None:
    """A part of a type the contract defines: its payload has the defined shape."""
    value = part.get(kind)
    wanted = _PAYLOADS[kind]
    if type(value) is not wanted:
        return _bad(*where, mid, f"{name}.{kind} is {_kind(value)}, not {_kind(wanted())}")
    if kind != "text":
        return None
    text = cast(dict[str, Any], value)
    if type(text.get("value")) is not str:
        return _bad(*where, mid, f"{name}.text.value is {_kind(text.get('value'))}, not a string")
    notes = text.get("annotations")
    if notes is not None and (
        type(notes) is not list or any(type(note) is not dict for note in notes)
    ):
        return _bad(*where, mid, f"{name}.text.annotations is not a list of objects")
    return None


def check_page(data: list[Any], thread_id: str) -> list[dict[str, Any]]:
    """Check every message of a listed page; returns the page with each id once (the later copy,
    at its own place), warning once per id listed more than once."""
    if not all(map(is_valid, data, repeat(thread_id))):
        index, obj = next((i, o) for i, o in enumerate(data) if not is_valid(o, thread_id))
        raise explain(obj, thread_id, index, None)
    ids = [obj["id"] for obj in data]
    if len(set(ids)) == len(ids):
        return data
    last = {mid: index for index, mid in enumerate(ids)}
    for mid in dict.fromkeys(mid for index, mid in enumerate(ids) if last[mid] != index):
        log.warning(
            "api.duplicate_message",
            thread=thread_id,
            message=mid,
            copies=ids.count(mid),
            kept="the later copy",
        )
    return [obj for index, obj in enumerate(data) if last[ids[index]] == index]
