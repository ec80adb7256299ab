"""Parsing of API paths into (family, route kind, template, ids), and per-family auth/versions.

Three path families share one state: Azure OpenAI (``/openai/threads...``, and its v1 endpoint
``/openai/v1/threads...`` without a dated api-version), the OpenAI platform (``/v1/threads...``)
and Foundry Agent Service classic (``/api/projects/{project}/threads...``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from worker.emulator.behaviour import UnknownRoute, UnknownVersion
from worker.emulator.identity import Identity
from worker.emulator.validation import Profile
from worker.emulator.wire import WireError, bad_request, bare_not_found, resource_not_found

AZURE_VERSIONS = frozenset({"2024-05-01-preview", "2024-08-01-preview"})
FOUNDRY_VERSIONS = frozenset({"2025-05-01"})
V1_VERSIONS = frozenset({"preview", "latest"})  # optional on Azure's v1 endpoint
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
    v1: bool = False  # Azure's /openai/v1 endpoint: no dated api-version

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
    v1 = path.startswith("/openai/v1/")
    if v1:
        profile, rest = "azure", path[10:]
    elif path.startswith("/openai/"):
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
    prefix = "/openai/v1" if v1 else _PREFIX_TEMPLATE[profile]
    return Route(
        profile=profile,
        kind=kind,
        template=method + " " + prefix + template,
        thread_id=parts[1] if len(parts) > 1 else None,
        message_id=parts[3] if len(parts) > 3 else None,
        v1=v1,
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


def unknown_route(method: str, path: str, mode: UnknownRoute) -> WireError:
    """The 404 for a path nothing lives at, in the form ``mode`` picks (see Behaviour)."""
    if mode == "family":
        mode = "resource" if path.startswith("/openai/") else "invalid_url"
    if mode == "resource":
        return resource_not_found()
    if mode == "bare":
        return bare_not_found()
    return WireError(404, f"Invalid URL ({method} {path})")


def check_access(
    route: Route,
    headers: dict[bytes, bytes],
    query: dict[str, str],
    api_key: str,
    identity: Identity,
    now: float,
    unknown_version: UnknownVersion = "resource",
) -> str:
    """Auth then version checks for the route's family; answers the caller's credential."""
    if route.conversation:
        return _conversation_access(route, credential(headers), api_key, identity, now)
    key = _authenticate(route, headers, api_key, identity, now)
    if route.v1:
        version = query.get("api-version")
        if version is not None and version not in V1_VERSIONS:
            raise bad_request(
                "The v1 API takes no dated api-version (only 'preview' or 'latest').",
                code="UnsupportedApiVersion",
                param="api-version",
            )
    elif route.profile == "azure":
        _check_version(query, AZURE_VERSIONS, unknown_status=404, mode=unknown_version)
    elif route.profile == "foundry":
        _check_version(query, FOUNDRY_VERSIONS, unknown_status=400)
    elif headers.get(b"openai-beta", b"").decode("latin-1") != BETA:
        raise bad_request(
            "You must provide the 'OpenAI-Beta' header to access the Assistants API. Please try "
            "again by setting the header 'OpenAI-Beta: assistants=v2'.",
            code="invalid_beta",
        )
    return key


def _authenticate(
    route: Route, headers: dict[bytes, bytes], api_key: str, identity: Identity, now: float
) -> str:
    """The caller's credential: an Entra token the identity endpoint issued, or the key."""
    found = credential(headers)
    if found is not None and found[0] == "bearer" and identity.check(found[1], route.profile, now):
        return "entra"
    if not identity.accepts_key(route.profile):
        identity.rejected += 1
        if found is not None and found[0] == "api-key" and route.profile == "azure":
            raise _key_disabled()
        raise identity.rejection(route.profile)
    azure = route.profile == "azure"
    if not azure and found is not None and found[0] == "api-key":
        found = None  # OpenAI and Foundry only take bearer tokens
    if found is None:
        if azure:
            raise _azure_denied()
        raise WireError(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )
    if found[1] != api_key:
        if found[0] == "bearer" and route.profile != "openai":
            # Azure's gateway validates any bearer as an Entra token, and says so.
            identity.rejected += 1
            raise identity.rejection(route.profile)
        if azure:
            raise _azure_denied()
        raise WireError(401, "Incorrect API key provided.", code="invalid_api_key")
    return found[1]


def _conversation_access(
    route: Route, found: Credential | None, api_key: str, identity: Identity, now: float
) -> str:
    """The v1 routes take no api-version and no beta header; Foundry and Azure also take
    ``api-key``, the OpenAI platform only a bearer key. An issued Entra token of an accepted
    audience is taken as on the messages routes, and the key refused where the ``--entra`` mode
    says the family takes tokens only."""
    if found is not None and found[0] == "bearer" and identity.check(found[1], route.profile, now):
        return "entra"
    if not identity.accepts_key(route.profile):
        identity.rejected += 1
        if found is not None and found[0] == "api-key" and route.profile == "azure":
            raise _key_disabled()
        raise identity.rejection(route.profile)
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


def _key_disabled() -> WireError:
    return WireError(
        403,
        "Key based authentication is disabled for this resource.",
        code="AuthenticationTypeDisabled",
    )


def _azure_denied() -> WireError:
    return WireError(
        401,
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
        "provide a valid key for an active subscription and use a correct regional API "
        "endpoint for your resource.",
        code="401",
    )


def _check_version(
    query: dict[str, str],
    known: frozenset[str],
    *,
    unknown_status: int,
    mode: UnknownVersion = "resource",
) -> None:
    version = query.get("api-version")
    if not version:
        raise bad_request(
            "Missing required query parameter 'api-version'.",
            code="MissingApiVersionParameter",
            param="api-version",
        )
    if version not in known and mode == "unsupported":
        raise bad_request(
            f"The HTTP resource that matches the request URI does not support the API version"
            f" '{version}'.",
            code="UnsupportedApiVersion",
        )
    if version not in known and mode == "bare" and unknown_status == 404:
        raise resource_not_found()
    if version not in known:
        # Azure OpenAI answers an api-version it does not serve as a missing resource.
        message = "Resource not found" if unknown_status == 404 else "Unsupported api-version."
        raise WireError(
            unknown_status,
            message,
            code=str(unknown_status) if unknown_status == 404 else "UnsupportedApiVersion",
            param="api-version",
        )
