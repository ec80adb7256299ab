"""Request validation as the service does it, and the pure metadata/content rules.

Each check raises a :class:`~worker.emulator.wire.WireError` carrying the vendor's error body.
Rules per profile: Azure's 2024 previews accept only a string ``content`` (1..256000 chars);
the OpenAI platform and Foundry accept a string or an array of text/image parts.
"""

from __future__ import annotations

from typing import Any, Literal

from worker.emulator.behaviour import MetadataMode
from worker.emulator.wire import WireError, bad_request

Profile = Literal["azure", "openai", "foundry"]

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_AZURE_CONTENT = 256_000
MAX_LIMIT = 100

MESSAGE_FIELDS = frozenset({"role", "content", "attachments", "metadata"})
THREAD_CREATE_FIELDS = frozenset({"messages", "metadata", "tool_resources"})
THREAD_MODIFY_FIELDS = frozenset({"metadata", "tool_resources"})
MESSAGE_MODIFY_FIELDS = frozenset({"metadata"})
_TOOL_TYPES = frozenset({"code_interpreter", "file_search"})
_DETAILS = frozenset({"auto", "low", "high"})


def _type_error(param: str, expected: str, value: Any) -> WireError:
    got = "null" if value is None else type(value).__name__
    return bad_request(
        f"Invalid type for '{param}': expected {expected}, but got {got} instead.",
        code="invalid_type",
        param=param,
    )


def check_fields(body: Any, allowed: frozenset[str]) -> dict[str, Any]:
    """The body must be a JSON object naming only ``allowed`` fields."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    for name in body:
        if name not in allowed:
            raise bad_request(
                f"Unrecognized request argument supplied: {name}",
                code="unknown_parameter",
                param=name,
            )
    return body


def check_metadata(metadata: Any, param: str = "metadata") -> dict[str, str]:
    """Strings only, at most 16 pairs, key <= 64 chars, value <= 512 chars."""
    if not isinstance(metadata, dict):
        raise _type_error(param, "an object", metadata)
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise _type_error(f"{param}.{key}", "a string", value)
        if len(key) > MAX_METADATA_KEY:
            raise bad_request(
                f"Invalid '{param}': keys must be at most {MAX_METADATA_KEY} characters.",
                code="string_above_max_length",
                param=f"{param}.{key}",
            )
        if len(value) > MAX_METADATA_VALUE:
            raise bad_request(
                f"Invalid '{param}.{key}': string too long, maximum {MAX_METADATA_VALUE}.",
                code="string_above_max_length",
                param=f"{param}.{key}",
            )
    if len(metadata) > MAX_METADATA_PAIRS:
        raise bad_request(
            f"Invalid '{param}': at most {MAX_METADATA_PAIRS} key-value pairs are allowed.",
            code="object_above_max_properties",
            param=param,
        )
    return metadata


def apply_metadata(current: dict[str, str], sent: Any, mode: MetadataMode) -> dict[str, str]:
    """The metadata after a modify; limits are checked on the result, as the service must.

    ``null`` leaves the map alone under ``merge`` and clears it under ``replace`` (unknown on the
    real service, API.md section 10.4). A null *value* is always rejected (section 5).
    """
    if sent is None:
        return dict(current) if mode == "merge" else {}
    if not isinstance(sent, dict):
        raise _type_error("metadata", "an object", sent)
    for key, value in sent.items():
        if not isinstance(value, str):
            raise _type_error(f"metadata.{key}", "a string", value)
    merged = {**current, **sent} if mode == "merge" else dict(sent)
    return check_metadata(merged)


def check_limit_order(limit: str | None, order: str | None) -> tuple[int, Literal["asc", "desc"]]:
    """Query ``limit`` (1..100, default 20) and ``order`` (asc|desc, default desc)."""
    value = 20
    if limit is not None:
        try:
            value = int(limit)
        except ValueError:
            raise _type_error("limit", "an integer", limit) from None
        if not 1 <= value <= MAX_LIMIT:
            raise bad_request(
                f"Invalid 'limit': integer must be between 1 and {MAX_LIMIT}, got {value}.",
                code="integer_out_of_range" if value > MAX_LIMIT else "integer_below_min_value",
                param="limit",
            )
    if order is None:
        return value, "desc"
    if order not in ("asc", "desc"):
        raise bad_request(
            f"Invalid value for 'order': expected one of asc, desc, got '{order}'.",
            code="invalid_value",
            param="order",
        )
    return value, "asc" if order == "asc" else "desc"


def text_part(value: str) -> dict[str, Any]:
    return {"type": "text", "text": {"value": value, "annotations": []}}


def message_content(content: Any, profile: Profile) -> list[dict[str, Any]]:
    """The stored content parts for a create-message ``content``."""
    if isinstance(content, str):
        if not content:
            raise bad_request(
                "Invalid 'content': string too short, minimum 1.",
                code="string_below_min_length",
                param="content",
            )
        if profile == "azure" and len(content) > MAX_AZURE_CONTENT:
            raise bad_request(
                f"Invalid 'content': string too long, maximum {MAX_AZURE_CONTENT}.",
                code="string_above_max_length",
                param="content",
            )
        return [text_part(content)]
    if profile == "azure" or not isinstance(content, list):
        raise _type_error("content", "a string", content)
    if not content:
        raise bad_request(
            "Invalid 'content': empty array, minimum 1 part.",
            code="empty_array",
            param="content",
        )
    return [_content_part(part, f"content[{i}]") for i, part in enumerate(content)]


def _content_part(part: Any, param: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise _type_error(param, "an object", part)
    kind = part.get("type")
    if kind == "text":
        check_fields(part, frozenset({"type", "text"}))
        if not isinstance(part.get("text"), str):
            raise _type_error(f"{param}.text", "a string", part.get("text"))
        return text_part(part["text"])
    if kind == "image_file":
        check_fields(part, frozenset({"type", "image_file"}))
        image = _image(part.get("image_file"), "file_id", f"{param}.image_file")
        return {"type": "image_file", "image_file": image}
    if kind == "image_url":
        check_fields(part, frozenset({"type", "image_url"}))
        image = _image(part.get("image_url"), "url", f"{param}.image_url")
        return {"type": "image_url", "image_url": image}
    raise bad_request(
        f"Invalid value for '{param}.type': expected one of text, image_file, image_url.",
        code="invalid_value",
        param=f"{param}.type",
    )


def _image(value: Any, id_field: str, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _type_error(param, "an object", value)
    check_fields(value, frozenset({id_field, "detail"}))
    if not isinstance(value.get(id_field), str):
        raise _type_error(f"{param}.{id_field}", "a string", value.get(id_field))
    if "detail" in value and value["detail"] not in _DETAILS:
        raise bad_request(
            f"Invalid value for '{param}.detail'.", code="invalid_value", param=f"{param}.detail"
        )
    return dict(value)


def attachments(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _type_error("attachments", "an array", value)
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        param = f"attachments[{i}]"
        check_fields(item, frozenset({"file_id", "tools"}))
        if not isinstance(item.get("file_id"), str):
            raise _type_error(f"{param}.file_id", "a string", item.get("file_id"))
        tools = item.get("tools", [])
        if not isinstance(tools, list) or any(
            not isinstance(t, dict) or t.get("type") not in _TOOL_TYPES for t in tools
        ):
            raise bad_request(
                f"Invalid '{param}.tools'.", code="invalid_value", param=f"{param}.tools"
            )
        out.append({"file_id": item["file_id"], "tools": [{"type": t["type"]} for t in tools]})
    return out


def check_role(role: Any) -> Literal["user", "assistant"]:
    if role not in ("user", "assistant"):
        raise bad_request(
            "Invalid value for 'role': expected one of user, assistant.",
            code="invalid_value",
            param="role",
        )
    return "user" if role == "user" else "assistant"


def check_create_message(body: Any, profile: Profile) -> dict[str, Any]:
    """Validated fields of a create-message body: role, content parts, attachments, metadata."""
    body = check_fields(body, MESSAGE_FIELDS)
    for required in ("role", "content"):
        if required not in body:
            raise bad_request(
                f"Missing required parameter: '{required}'.",
                code="missing_required_parameter",
                param=required,
            )
    metadata = body.get("metadata")
    return {
        "role": check_role(body["role"]),
        "content": message_content(body["content"], profile),
        "attachments": attachments(body.get("attachments")),
        "metadata": {} if metadata is None else check_metadata(metadata),
    }


def check_tool_resources(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _type_error("tool_resources", "an object", value)
    check_fields(value, frozenset({"code_interpreter", "file_search"}))
    return value
