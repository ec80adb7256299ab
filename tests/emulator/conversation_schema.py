"""Validation against the 2026-08-21 OpenAPI document's Conversations schemas.

The closure of the schemas used is vendored (``specs/openai-2026-08-21-conversation-schemas.json``)
so any clone validates; a test checks it against the public document when that is at hand. The
document is OpenAPI 3.1 (``type: "null"`` alternatives), hence the 3.1 validator; refs are
resolved against the vendored ``components.schemas`` rather than inlined.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import orjson
from openapi_schema_validator import OAS31Validator

SPEC_NAME = "openai-openapi-2026-08-21-f85dbe2.yaml"
VENDORED = Path(__file__).with_name("specs") / "openai-2026-08-21-conversation-schemas.json"
ROOTS = [
    "ConversationResource",
    "ConversationItemList",
    "ConversationItem",
    "DeletedConversationResource",
    "ErrorResponse",
    "InputItem",
    "CreateConversationBody",
]


@cache
def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = orjson.loads(VENDORED.read_bytes())["schemas"]
    return schemas


@cache
def _validator(name: str) -> OAS31Validator:
    return OAS31Validator(
        {"$ref": f"#/components/schemas/{name}", "components": {"schemas": _schemas()}}
    )


def validate(name: str, body: Any) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``body`` matches schema ``name``."""
    if name == "ConversationItemList" and not body["data"]:
        # An empty page cannot name an id: the emulator (as OpenAI's other lists do) answers
        # null where the spec says string. Pin that, then validate the rest.
        assert body["first_id"] is None
        assert body["last_id"] is None
        body = {**body, "first_id": "", "last_id": ""}
    _validator(name).validate(body)


def is_valid(name: str, body: Any) -> bool:
    return bool(_validator(name).is_valid(body))


def validate_message_item(item: dict[str, Any]) -> None:
    """A message input item against the branch of ``InputItem`` its role selects.

    ``InputItem`` is a ``oneOf`` whose message branches overlap (a user message is both an
    ``EasyInputMessage`` and an ``InputMessage``), so the union itself rejects every user message
    as ambiguous. Assistant history in ``output_text`` parts is only described by ``OutputMessage``,
    which requires ``id`` and ``status`` the service does not need on input (openai-openapi#475;
    the official migration guide sends neither): they are filled in here to check the rest.
    """
    if item.get("role") == "assistant":
        _validator("OutputMessage").validate({"id": "msg_x", "status": "completed", **item})
    else:
        _validator("EasyInputMessage").validate(item)
        _validator("InputMessage").validate(item)
