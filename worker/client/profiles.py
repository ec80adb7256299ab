"""Per-profile request building: base URL, fixed query parameters and headers. Pure; no I/O.

The three service families serve the same thread/message paths under different roots:

- ``azure``: ``{endpoint}/openai/threads/...``, ``api-version`` on every request, the key in an
  ``api-key`` header (or ``Authorization: Bearer`` for an Entra token);
- ``openai``: ``{endpoint}/v1/threads/...``, bearer key and ``OpenAI-Beta: assistants=v2``, plus
  ``OpenAI-Organization``/``OpenAI-Project`` when set (as the openai SDK sends them); Azure's v1
  endpoint (``https://<resource>.openai.azure.com/openai/v1``) is this profile too;
- ``foundry``: ``{endpoint}/api/projects/{project}/threads/...``, ``api-version``, bearer only.

With ``api.auth = entra`` no credential is constant: :mod:`worker.client.auth` adds the token to
each request.
"""

from __future__ import annotations

import os
import random
import re
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from worker import __version__
from worker.config import ApiSettings, Profile
from worker.errors import ConfigError

USER_AGENT = f"threadsync/{__version__}"
OPENAI_DEFAULT_ENDPOINT = "https://api.openai.com"

# Which variable a user sets to give the key, per profile (named in ConfigError messages).
KEY_ENV_VAR = {
    Profile.AZURE: "AZURE_OPENAI_API_KEY",
    Profile.OPENAI: "OPENAI_API_KEY",
    Profile.FOUNDRY: "THREADSYNC_API__AUTH=entra (tokens from azure-identity), or a token you"
    " obtained in AZURE_OPENAI_API_KEY",
}

# The role an Entra identity needs for threads and messages, named in errors and the README.
ENTRA_ROLE = {
    Profile.AZURE: "Cognitive Services OpenAI User",
    Profile.OPENAI: "Cognitive Services OpenAI User",
    Profile.FOUNDRY: "Azure AI User",
}

# Which settings a user checks when the service answers that the path or the version is wrong.
ENDPOINT_SETTING = {
    Profile.AZURE: "AZURE_OPENAI_ENDPOINT (api.endpoint: https://<resource>.openai.azure.com,"
    " no path) and api.profile",
    Profile.OPENAI: "OPENAI_BASE_URL (api.endpoint) and api.profile",
    Profile.FOUNDRY: "api.endpoint and api.project (the project endpoint"
    " https://<aiservices>.services.ai.azure.com/api/projects/<name>) and api.profile",
}
VERSION_SETTING = "OPENAI_API_VERSION (api.api_version)"
ENDPOINT_VARIABLE = {
    Profile.AZURE: "AZURE_OPENAI_ENDPOINT",
    Profile.OPENAI: "OPENAI_BASE_URL",
    Profile.FOUNDRY: "api.endpoint",
}

_PROJECT_PATH = re.compile(r"/api/projects/[^/]+")


@dataclass(frozen=True)
class Target:
    """Everything constant about where and how requests go; ``headers`` hold the credential."""

    base_url: str
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict, repr=False)


def base_url(api: ApiSettings) -> str:
    """The URL the ``/threads...`` routes are appended to, without a trailing slash."""
    endpoint = (api.endpoint or "").rstrip("/")
    if api.profile is Profile.OPENAI:
        endpoint = endpoint or OPENAI_DEFAULT_ENDPOINT
        return endpoint if endpoint.endswith("/v1") else f"{endpoint}/v1"
    if not endpoint:
        raise ConfigError(
            "api.endpoint is not set; set AZURE_OPENAI_ENDPOINT (or THREADSYNC_API__ENDPOINT),"
            " e.g. https://myres.openai.azure.com"
        )
    if api.profile is Profile.FOUNDRY:
        if _PROJECT_PATH.search(endpoint):
            return endpoint
        if not api.project:
            raise ConfigError(
                "api.project is not set for the foundry profile; set THREADSYNC_API__PROJECT or use"
                " the project endpoint https://<aiservices>.services.ai.azure.com/api/projects/<name>"
            )
        return f"{endpoint}/api/projects/{quote(api.project, safe='')}"
    return f"{endpoint}/openai"


def host_of(api: ApiSettings) -> str:
    """The host requests go to (named when no connection can be made), never with credentials."""
    return urlsplit(base_url(api)).hostname or "?"


def fixed_params(api: ApiSettings) -> dict[str, str]:
    """Query parameters sent on every request (the dated ``api-version`` for azure and foundry)."""
    if api.profile is Profile.OPENAI:
        return {}
    version = api.effective_api_version()
    return {"api-version": version} if version else {}


def auth_headers(api: ApiSettings, key: str | None) -> dict[str, str]:
    """The static credential header (none for Entra tokens) plus the fixed headers per profile."""
    auth = api.effective_auth()
    if api.profile is Profile.FOUNDRY and auth == "api-key":
        raise ConfigError(
            "api.auth: the foundry profile accepts only Entra tokens; set"
            " THREADSYNC_API__AUTH=entra (tokens from azure-identity) or bearer (a token you give)"
        )
    headers = {"User-Agent": USER_AGENT}
    if auth == "bearer":
        headers["Authorization"] = f"Bearer {key}"
    elif auth == "api-key":
        headers["api-key"] = f"{key}"
    if api.profile is Profile.OPENAI:
        headers["OpenAI-Beta"] = "assistants=v2"
        if api.organization:
            headers["OpenAI-Organization"] = api.organization
        if api.openai_project:
            headers["OpenAI-Project"] = api.openai_project
    return headers


def api_key(api: ApiSettings) -> str:
    """The key from the environment or key file; a ConfigError naming the variable when absent."""
    secret = api.secret()
    key = secret.get_secret_value() if secret is not None else ""
    if not key:
        raise ConfigError(
            f"no API key for the {api.profile.value} profile; set {KEY_ENV_VAR[api.profile]}"
            " or name a key file with THREADSYNC_API__API_KEY_FILE"
        )
    return key


def build_target(api: ApiSettings, key: str | None) -> Target:
    """Validate the settings for talking to the API and build the constant request parts."""
    url = base_url(api)
    if api.effective_auth() == "entra" and urlsplit(url).hostname == "api.openai.com":
        raise ConfigError(
            "api.auth=entra: api.openai.com takes API keys only (OPENAI_API_KEY); Entra tokens are"
            " for Azure endpoints such as https://<resource>.openai.azure.com/openai/v1"
        )
    return Target(base_url=url, params=fixed_params(api), headers=auth_headers(api, key))


# Client request ids are drawn from a generator seeded once per process, not from os.urandom
# (uuid.uuid4): an id must be unique, not secret, and each os.urandom call is a system call
# that gives up the GIL, so the event loop then waited for it behind the database's worker
# threads (bench_freshness: ~90 us a request under load).
# A forked child (a test's or a pool's process) reseeds it, or it would repeat its parent's ids.
_REQUEST_IDS = random.Random()
os.register_at_fork(after_in_child=_REQUEST_IDS.seed)


def request_headers() -> dict[str, str]:
    """Headers that change per request: a fresh client request id (a random UUID, version 4)
    to correlate with the server."""
    request_id = uuid.UUID(int=_REQUEST_IDS.getrandbits(128), version=4)
    return {"x-ms-client-request-id": str(request_id)}


def fill_route(route: str, **ids: str) -> str:
    """``/threads/{thread_id}`` -> ``/threads/thread_abc``; ids are percent-encoded whole, so an id
    can never add path segments or a query string."""
    return route.format(**{name: quote(value, safe="") for name, value in ids.items()})
