"""The Conversations API (2026-08-21 OpenAPI document) as the three families serve it.

- ``openai``: ``/v1/conversations...``, bearer key;
- ``foundry``: ``/api/projects/{project}/openai/v1/conversations...``, bearer or ``api-key``, no
  api-version; the only family that lists conversations and pages items with ``before`` too;
- ``azure``: ``/openai/v1/conversations...`` (unverified on the real service), bearer or api-key.

What the service enforces and a migrator must shape itself around: at most 20 items per create
and per append; an assistant message holds only ``output_text``/``refusal`` parts (anything else
is the 400 the community reports); items carry no time, metadata, run or assistant; no idempotency
key. Items are stored as the read side's ``Message`` (every required field present) and answered
newest first unless ``order=asc``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from worker.emulator.validation import Profile, check_fields, check_limit_order, check_metadata
from worker.emulator.wire import WireError, bad_request, dumps, not_found

if TYPE_CHECKING:
    from worker.emulator.state import Emulator

MAX_ITEMS = 20
CREATE_FIELDS = frozenset({"items", "metadata"})
UPDATE_FIELDS = frozenset({"metadata"})
ITEMS_FIELDS = frozenset({"items"})
ITEM_FIELDS = frozenset({"type", "role", "content", "phase", "status", "id"})
ROLES = frozenset({"user", "assistant", "system", "developer"})
INPUT_PARTS = ("input_text", "input_image", "input_file")
OUTPUT_PARTS = ("output_text", "refusal")
IMAGE_DETAILS = frozenset({"low", "high", "auto", "original"})
ANNOTATION_FIELDS: dict[str, frozenset[str]] = {
    "file_citation": frozenset({"file_id", "index", "filename"}),
    "url_citation": frozenset({"url", "start_index", "end_index", "title"}),
    "container_file_citation": frozenset(
        {"container_id", "file_id", "start_index", "end_index", "filename"}
    ),
    "file_path": frozenset({"file_id", "index"}),
}
KINDS = frozenset(
    {
        "conversation.create",
        "conversation.list",
        "conversation.get",
        "conversation.update",
        "conversation.delete",
        "items.create",
        "items.list",
        "item.get",
        "item.delete",
    }
)


@dataclass(slots=True)
class Conversation:
    id: str
    created_at: int
    metadata: dict[str, str]
    items: list[dict[str, Any]] = field(default_factory=list)

    def resource(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "conversation",
            "created_at": self.created_at,
            "metadata": dict(self.metadata),
        }


@dataclass(slots=True)
class Conversations:
    """Every live conversation, in creation order."""

    by_id: dict[str, Conversation] = field(default_factory=dict)

    def get(self, conversation_id: str) -> Conversation:
        found = self.by_id.get(conversation_id)
        if found is None:
            raise not_found(f"Conversation with id '{conversation_id}' not found.")
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            cid: {"created_at": c.created_at, "metadata": c.metadata, "items": c.items}
            for cid, c in self.by_id.items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Conversations:
        return cls(
            {
                cid: Conversation(cid, c["created_at"], dict(c["metadata"]), list(c["items"]))
                for cid, c in data.items()
            }
        )


# -- request validation ----------------------------------------------------------------------------


def _invalid_part(param: str, got: str, allowed: tuple[str, ...]) -> WireError:
    names = [f"'{a}'" for a in allowed]
    if len(names) == 2:
        listed = " and ".join(names)
    else:
        listed = ", ".join(names[:-1]) + ", and " + names[-1]
    return bad_request(
        f"Invalid value: '{got}'. Supported values are: {listed}.",
        code="invalid_value",
        param=param,
    )


def _string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        got = "null" if value is None else type(value).__name__
        raise bad_request(
            f"Invalid type for '{param}': expected a string, but got {got} instead.",
            code="invalid_type",
            param=param,
        )
    return value


def _annotation(value: Any, param: str) -> dict[str, Any]:
    kind = value.get("type") if isinstance(value, dict) else None
    if not isinstance(value, dict) or kind not in ANNOTATION_FIELDS:
        raise _invalid_part(param + ".type", str(kind), tuple(ANNOTATION_FIELDS))
    wanted = ANNOTATION_FIELDS[value["type"]]
    missing = sorted(wanted - set(value))
    if missing:
        raise bad_request(
            f"Missing required parameter: '{param}.{missing[0]}'.",
            code="missing_required_parameter",
            param=f"{param}.{missing[0]}",
        )
    return {"type": value["type"], **{k: value[k] for k in sorted(wanted)}}


def _part(part: Any, role: str, param: str) -> dict[str, Any]:
    """One content part, checked for the role and returned in the read side's shape."""
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise bad_request(f"Missing required parameter: '{param}.type'.", param=param + ".type")
    kind = part["type"]
    allowed = OUTPUT_PARTS if role == "assistant" else INPUT_PARTS
    if kind not in allowed:
        raise _invalid_part(param, kind, allowed)
    if kind == "input_text":
        return {"type": kind, "text": _string(part.get("text"), param + ".text")}
    if kind == "output_text":
        notes = part.get("annotations", [])
        if not isinstance(notes, list):
            raise bad_request(f"Invalid type for '{param}.annotations'.", param=param)
        return {
            "type": kind,
            "text": _string(part.get("text"), param + ".text"),
            "annotations": [
                _annotation(a, f"{param}.annotations[{i}]") for i, a in enumerate(notes)
            ],
            "logprobs": [],
        }
    if kind == "refusal":
        return {"type": kind, "refusal": _string(part.get("refusal"), param + ".refusal")}
    if kind == "input_image":
        return _image(part, param)
    return _file(part, param)


def _image(part: dict[str, Any], param: str) -> dict[str, Any]:
    detail = part.get("detail", "auto")
    if detail not in IMAGE_DETAILS:
        raise _invalid_part(param + ".detail", str(detail), tuple(sorted(IMAGE_DETAILS)))
    file_id, url = part.get("file_id"), part.get("image_url")
    if (file_id is None) == (url is None):
        raise bad_request(
            f"Invalid '{param}': exactly one of 'image_url' or 'file_id' must be provided.",
            code="invalid_value",
            param=param,
        )
    return {
        "type": "input_image",
        "detail": detail,
        "file_id": None if file_id is None else _string(file_id, param + ".file_id"),
        "image_url": None if url is None else _string(url, param + ".image_url"),
    }


def _file(part: dict[str, Any], param: str) -> dict[str, Any]:
    given = [k for k in ("file_id", "file_data", "file_url") if part.get(k) is not None]
    if len(given) != 1:
        raise bad_request(
            f"Invalid '{param}': exactly one of 'file_id', 'file_data' or 'file_url' must be"
            " provided.",
            code="invalid_value",
            param=param,
        )
    out: dict[str, Any] = {"type": "input_file"}
    for key in ("file_id", "file_data", "file_url", "filename"):
        if part.get(key) is not None:
            out[key] = _string(part[key], f"{param}.{key}")
    return out


def check_item(item: Any, param: str) -> tuple[str, list[dict[str, Any]]]:
    """A message input item: ``(role, content parts as the read side shows them)``."""
    if not isinstance(item, dict):
        raise bad_request(f"Invalid type for '{param}': expected an object.", param=param)
    kind = item.get("type", "message")
    if kind != "message":
        raise bad_request(
            f"Invalid value for '{param}.type': the emulator stores message items only, not"
            f" '{kind}'.",
            code="invalid_value",
            param=param + ".type",
        )
    check_fields(item, ITEM_FIELDS)
    role = item.get("role")
    if role not in ROLES:
        raise _invalid_part(param + ".role", str(role), tuple(sorted(ROLES)))
    content = item.get("content")
    if isinstance(content, str):
        text_kind = "output_text" if role == "assistant" else "input_text"
        content = [{"type": text_kind, "text": content}]
    if not isinstance(content, list):
        raise bad_request(
            f"Invalid type for '{param}.content': expected a string or an array.",
            code="invalid_type",
            param=param + ".content",
        )
    return role, [_part(p, role, f"{param}.content[{j}]") for j, p in enumerate(content)]


def check_items(items: Any, *, required: bool) -> list[tuple[str, list[dict[str, Any]]]]:
    if items is None and not required:
        return []
    if not isinstance(items, list):
        got = "null" if items is None else type(items).__name__
        raise bad_request(
            f"Invalid type for 'items': expected an array, but got {got} instead.",
            code="invalid_type" if items is not None else "missing_required_parameter",
            param="items",
        )
    if len(items) > MAX_ITEMS:
        raise bad_request(
            f"Invalid 'items': array too long. Expected an array with maximum length"
            f" {MAX_ITEMS}, but got an array with length {len(items)} instead.",
            code="array_above_max_length",
            param="items",
        )
    return [check_item(item, f"items[{i}]") for i, item in enumerate(items)]


# -- operations ------------------------------------------------------------------------------------


def _list_body(data: list[dict[str, Any]], has_more: bool) -> bytes:
    return dumps(
        {
            "object": "list",
            "data": data,
            "has_more": has_more,
            # An empty page cannot name an id; the spec types both as strings.
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


def _window(
    rows: list[dict[str, Any]], query: dict[str, str], profile: Profile
) -> tuple[list[dict[str, Any]], bool]:
    """The page of ``rows`` (oldest first) that ``limit/order/after/before`` select."""
    limit, order = check_limit_order(query.get("limit"), query.get("order"))
    if "before" in query and profile != "foundry":
        raise bad_request(
            "Unrecognized request argument supplied: before",
            code="unknown_parameter",
            param="before",
        )
    ordered = rows if order == "asc" else rows[::-1]
    ids = [r["id"] for r in ordered]
    start, stop = 0, len(ordered)
    for name in ("after", "before"):
        cursor = query.get(name)
        if not cursor:
            continue
        if cursor not in ids:
            raise bad_request(f"Invalid '{name}': no item with id '{cursor}'.", param=name)
        if name == "after":
            start = ids.index(cursor) + 1
        else:
            stop = ids.index(cursor)
    if query.get("before") and not query.get("after"):
        page = ordered[max(start, stop - limit) : stop]
        return page, stop - limit > start
    page = ordered[start : min(stop, start + limit)]
    return page, start + limit < stop


def handle(
    emulator: Emulator,
    kind: str,
    profile: Profile,
    cid: str,
    iid: str,
    query: dict[str, str],
    body: Any,
) -> bytes:
    """Perform one conversations route on ``emulator`` (its lock held) and answer the 200 body."""
    store: Conversations = emulator.conversations
    if kind == "conversation.create":
        data = check_fields(body if body is not None else {}, CREATE_FIELDS)
        metadata = data.get("metadata")
        metadata = {} if metadata is None else check_metadata(metadata)
        checked = check_items(data.get("items"), required=False)
        conversation = Conversation(emulator.new_id("conv_"), int(emulator.now()), dict(metadata))
        _append(emulator, conversation, checked)
        store.by_id[conversation.id] = conversation
        emulator.changed()
        return dumps(conversation.resource())
    if kind == "conversation.list":
        rows = [c.resource() for c in store.by_id.values()]
        page, more = _window(rows, query, profile)
        return _list_body(page, more)
    conversation = store.get(cid)
    if kind == "conversation.get":
        return dumps(conversation.resource())
    if kind == "conversation.update":
        data = check_fields(body, UPDATE_FIELDS)
        if "metadata" not in data:
            raise bad_request("Missing required parameter: 'metadata'.", param="metadata")
        conversation.metadata = dict(check_metadata(data["metadata"]))
        emulator.changed()
        return dumps(conversation.resource())
    if kind == "conversation.delete":
        # "Items in the conversation will not be deleted": they simply become unreachable here.
        del store.by_id[cid]
        emulator.changed()
        return dumps({"id": cid, "object": "conversation.deleted", "deleted": True})
    if kind == "items.create":
        data = check_fields(body, ITEMS_FIELDS)
        added = _append(emulator, conversation, check_items(data.get("items"), required=True))
        emulator.changed()
        if emulator.behaviour.appended_order == "desc":
            added = added[::-1]
        return _list_body(added, False)
    if kind == "items.list":
        page, more = _window(conversation.items, query, profile)
        return _list_body(page, more)
    item = next((i for i in conversation.items if i["id"] == iid), None)
    if item is None:
        raise not_found(f"Item with id '{iid}' not found.")
    if kind == "item.get":
        return dumps(item)
    conversation.items.remove(item)  # item.delete answers the parent conversation (sic)
    emulator.changed()
    return dumps(conversation.resource())


def _annotations(emulator: Emulator, checked: list[tuple[str, list[dict[str, Any]]]]) -> None:
    """Apply the ``input_annotations`` behaviour to validated items (before anything is stored)."""
    mode = emulator.behaviour.input_annotations
    for i, (_, parts) in enumerate(checked):
        for j, part in enumerate(parts):
            if not part.get("annotations"):
                continue
            if mode == "reject":
                raise bad_request(
                    "Annotations are not supported on input items.",
                    code="invalid_value",
                    param=f"items[{i}].content[{j}].annotations",
                )
            if mode == "drop":
                part["annotations"] = []


def _append(
    emulator: Emulator, conversation: Conversation, checked: list[tuple[str, list[dict[str, Any]]]]
) -> list[dict[str, Any]]:
    _annotations(emulator, checked)
    added = [
        {
            "type": "message",
            "id": emulator.new_id("msg_"),
            "status": "completed",
            "role": role,
            "content": parts,
        }
        for role, parts in checked
    ]
    conversation.items.extend(added)
    return added
