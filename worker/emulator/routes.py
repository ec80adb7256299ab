"""Parsing of API paths into (family, route kind, template, ids), and per-family auth/versions.

Three path families share one state: Azure OpenAI (``/openai/threads...``), the OpenAI platform
(``/v1/threads...``) and Foundry Agent Service classic (``/api/projects/{project}/threads...``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from worker.emulator.validation import Profile
from worker.emulator.wire import WireError, bad_request

AZURE_VERSIONS = frozenset({"2024-05-01-preview", "2024-08-01-preview"})
FOUNDRY_VERSIONS = frozenset({"2025-05-01"})
BETA = "assistants=v2"

_PREFIX_TEMPLATE: dict[Profile, str] = {
    "azure": "/openai",
    "openai": "/v1",
    "foundry": "/api/projects/{project}",
}
_SHAPES: dict[tuple[int, str], tuple[str, str]] = {
    # (segments after the prefix, method) -> (route kind, path template after the prefix)
    (1, "POST"): ("thread.create", "/threads"),
    (1, "GET"): ("thread.list", "/threads"),
    (2, "GET"): ("thread.get", "/threads/{thread_id}"),
    (2, "POST"): ("thread.modify", "/threads/{thread_id}"),
    (2, "DELETE"): ("thread.delete", "/threads/{thread_id}"),
    (3, "GET"): ("list", "/threads/{thread_id}/messages"),
    (3, "POST"): ("create", "/threads/{thread_id}/messages"),
    (4, "GET"): ("get", "/threads/{thread_id}/messages/{message_id}"),
    (4, "POST"): ("modify", "/threads/{thread_id}/messages/{message_id}"),
    (4, "DELETE"): ("delete", "/threads/{thread_id}/messages/{message_id}"),
}


@dataclass(frozen=True, slots=True)
class Route:
    profile: Profile
    kind: str
    template: str
    thread_id: str | None = None
    message_id: str | None = None

    @property
    def conversation(self) -> bool:
        return self.kind.startswith(("conversation.", "item"))

    @property
    def mutates(self) -> bool:
        return self.kind.rsplit(".", 1)[-1] in ("create", "modify", "delete")


_CONVERSATION_SHAPES: dict[tuple[int, str], tuple[str, str]] = {
    (1, "POST"): ("conversation.create", "/conversations"),
    (1, "GET"): ("conversation.list", "/conversations"),
    (2, "GET"): ("conversation.get", "/conversations/{conversation_id}"),
    (2, "POST"): ("conversation.update", "/conversations/{conversation_id}"),
    (2, "DELETE"): ("conversation.delete", "/conversations/{conversation_id}"),
    (3, "GET"): ("items.list", "/conversations/{conversation_id}/items"),
    (3, "POST"): ("items.create", "/conversations/{conversation_id}/items"),
    (4, "GET"): ("item.get", "/conversations/{conversation_id}/items/{item_id}"),
    (4, "DELETE"): ("item.delete", "/conversations/{conversation_id}/items/{item_id}"),
}
_CONVERSATION_PREFIX: dict[Profile, str] = {
    "azure": "/openai/v1",
    "openai": "/v1",
    "foundry": "/api/projects/{project}/openai/v1",
}


def parse_conversation(method: str, path: str) -> Route | None:
    """A Conversations API route (``/v1``, ``/openai/v1``, ``/api/projects/{p}/openai/v1``).

    The conversation id travels as ``thread_id`` and the item id as ``message_id``, so faults
    can target one conversation as they target one thread.
    """
    profile: Profile
    if path.startswith("/v1/conversations"):
        profile, rest = "openai", path[3:]
    elif path.startswith("/openai/v1/conversations"):
        profile, rest = "azure", path[10:]
    elif path.startswith("/api/projects/"):
        project, _, tail = path[14:].partition("/")
        if not project or not tail.startswith("openai/v1/conversations"):
            return None
        profile, rest = "foundry", tail[9:]
    else:
        return None
    parts = rest.strip("/").split("/")
    if parts[0] != "conversations" or "" in parts or (len(parts) >= 3 and parts[2] != "items"):
        return None
    shape = _CONVERSATION_SHAPES.get((len(parts), method))
    if shape is None or (shape[0] == "conversation.list" and profile != "foundry"):
        return None  # only Foundry lists conversations
    kind, template = shape
    return Route(
        profile=profile,
        kind=kind,
        template=method + " " + _CONVERSATION_PREFIX[profile] + template,
        thread_id=parts[1] if len(parts) > 1 else None,
        message_id=parts[3] if len(parts) > 3 else None,
    )


def parse(method: str, path: str) -> Route | None:
    """The API route for ``method path``, or None when nothing lives there."""
    if "/conversations" in path:
        return parse_conversation(method, path)
    profile: Profile
    if path.startswith("/openai/"):
        profile, rest = "azure", path[7:]
    elif path.startswith("/v1/"):
        profile, rest = "openai", path[3:]
    elif path.startswith("/api/projects/"):
        project, sep, tail = path[14:].partition("/")
        if not project or not sep:
            return None
        profile, rest = "foundry", "/" + tail
    else:
        return None
    parts = rest.strip("/").split("/")
    if parts[0] != "threads" or len(parts) > 4 or "" in parts:
        return None
    if len(parts) >= 3 and parts[2] != "messages":
        return None
    shape = _SHAPES.get((len(parts), method))
    if shape is None:
        return None
    kind, template = shape
    if kind == "thread.list" and profile != "foundry":
        return None  # neither Azure OpenAI nor the OpenAI platform can list threads
    return Route(
        profile=profile,
        kind=kind,
        template=method + " " + _PREFIX_TEMPLATE[profile] + template,
        thread_id=parts[1] if len(parts) > 1 else None,
        message_id=parts[3] if len(parts) > 3 else None,
    )


Credential = tuple[Literal["api-key", "bearer"], str]


def credential(headers: dict[bytes, bytes]) -> Credential | None:
    auth = headers.get(b"authorization")
    if auth is not None:
        scheme, _, token = auth.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and token:
            return ("bearer", token.strip())
    key = headers.get(b"api-key")
    if key:
        return ("api-key", key.decode("latin-1"))
    return None


def check_access(
    route: Route, headers: dict[bytes, bytes], query: dict[str, str], api_key: str
) -> str:
    """Auth then version checks for the route's family; answers the caller's credential."""
    found = credential(headers)
    if route.conversation:
        return _conversation_access(route, found, api_key)
    if route.profile != "azure" and found is not None and found[0] == "api-key":
        found = None  # OpenAI and Foundry only take bearer tokens
    if found is None:
        if route.profile == "azure":
            raise _azure_denied()
        raise WireError(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )
    if found[1] != api_key:
        if route.profile == "azure":
            raise _azure_denied()
        raise WireError(401, "Incorrect API key provided.", code="invalid_api_key")
    if route.profile == "azure":
        _check_version(query, AZURE_VERSIONS, unknown_status=404)
    elif route.profile == "foundry":
        _check_version(query, FOUNDRY_VERSIONS, unknown_status=400)
    elif headers.get(b"openai-beta", b"").decode("latin-1") != BETA:
        raise bad_request(
            "You must provide the 'OpenAI-Beta' header to access the Assistants API. Please try "
            "again by setting the header 'OpenAI-Beta: assistants=v2'.",
            code="invalid_beta",
        )
    return found[1]


def _conversation_access(route: Route, found: Credential | None, api_key: str) -> str:
    """The v1 routes take no api-version and no beta header; Foundry and Azure also take
    ``api-key``, the OpenAI platform only a bearer key."""
    if route.profile == "openai" and found is not None and found[0] == "api-key":
        found = None
    if found is None or found[1] != api_key:
        if route.profile == "azure":
            raise _azure_denied()
        if found is None:
            raise WireError(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        raise WireError(401, "Incorrect API key provided.", code="invalid_api_key")
    return found[1]


def _azure_denied() -> WireError:
    return WireError(
        401,
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
        "provide a valid key for an active subscription and use a correct regional API "
        "endpoint for your resource.",
        code="401",
    )


def _check_version(query: dict[str, str], known: frozenset[str], *, unknown_status: int) -> None:
    version = query.get("api-version")
    if not version:
        raise bad_request(
            "Missing required query parameter 'api-version'.",
            code="MissingApiVersionParameter",
            param="api-version",
        )
    if version not in known:
        # Azure OpenAI answers an api-version it does not serve as a missing resource.
        message = "Resource not found" if unknown_status == 404 else "Unsupported api-version."
        raise WireError(
            unknown_status,
            message,
            code=str(unknown_status) if unknown_status == 404 else "UnsupportedApiVersion",
            param="api-version",
        )
