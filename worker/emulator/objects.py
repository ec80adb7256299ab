"""Wire objects: message and thread dicts with every field of the spec, and list bodies.

List bodies are assembled by joining each record's cached JSON bytes, which is what lets one
uvicorn worker serve well over a thousand 100-message pages a second.
"""

from __future__ import annotations

from typing import Any

import orjson

from worker.emulator.timeline import Page


def message_object(
    *,
    message_id: str,
    thread_id: str,
    created_at: int,
    role: str,
    content: list[dict[str, Any]],
    status: str = "completed",
    assistant_id: str | None = None,
    run_id: str | None = None,
    attachments: list[dict[str, Any]] | None = None,
    metadata: dict[str, str] | None = None,
    incomplete_details: dict[str, str] | None = None,
    completed_at: int | None = None,
    incomplete_at: int | None = None,
) -> dict[str, Any]:
    return {
        "id": message_id,
        "object": "thread.message",
        "created_at": created_at,
        "thread_id": thread_id,
        "status": status,
        "incomplete_details": incomplete_details,
        "completed_at": completed_at,
        "incomplete_at": incomplete_at,
        "role": role,
        "content": content,
        "assistant_id": assistant_id,
        "run_id": run_id,
        "attachments": attachments or [],
        "metadata": metadata or {},
    }


def thread_object(
    *,
    thread_id: str,
    created_at: int,
    metadata: dict[str, str] | None = None,
    tool_resources: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": thread_id,
        "object": "thread",
        "created_at": created_at,
        "metadata": metadata or {},
        "tool_resources": tool_resources or {},
    }


def deleted_object(object_id: str, kind: str) -> dict[str, Any]:
    return {"id": object_id, "object": kind, "deleted": True}


def list_body(page: Page, *, full: bool) -> bytes:
    """The list response. ``full``: OpenAI/Azure shape; Foundry omits ``object`` and ``first_id``.

    On an empty page the ids are ``null``: the spec types them as strings, but no id can be named,
    and the worker must cope with null (API.md section 2.5).
    """
    items = page.items
    data = b",".join(r.json() for r in items)
    last = orjson.dumps(items[-1].id if items else None)
    more = b"true" if page.has_more else b"false"
    if not full:
        return b'{"data":[' + data + b'],"last_id":' + last + b',"has_more":' + more + b"}"
    first = orjson.dumps(items[0].id if items else None)
    return (
        b'{"object":"list","data":['
        + data
        + b'],"first_id":'
        + first
        + b',"last_id":'
        + last
        + b',"has_more":'
        + more
        + b"}"
    )
