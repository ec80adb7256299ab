"""The Conversations API client for the migration's destination.

It is :class:`~worker.client.api.ApiClient` aimed elsewhere: the same request loop, retry policy
(``Retry-After`` honoured, 429 pauses every caller), pacer and error translation. A POST that
carries items is never repeated once it may have reached the server (no idempotency key exists):
the caller settles it by reading the conversation. Setting a conversation's metadata is a map
write, safe to repeat.

URLs per profile: ``openai`` ``{endpoint or https://api.openai.com}/v1/conversations``;
``foundry`` ``https://<resource>.services.ai.azure.com/api/projects/<project>/openai/v1/...``;
``azure`` ``https://<resource>.openai.azure.com/openai/v1/...`` (not confirmed by Microsoft's
documentation). None takes an api-version.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, urlsplit

from worker.client.api import ApiClient
from worker.client.auth import EntraTokens
from worker.client.models import MessagePage, parse_object, parse_page
from worker.client.profiles import USER_AGENT, Target
from worker.config import ApiSettings, RetrySettings, is_loopback
from worker.errors import ConfigError
from worker.logs import register_secret
from worker.migrate.settings import TargetSettings

CONVERSATIONS = "/conversations"
CONVERSATION = "/conversations/{conversation_id}"
ITEMS = "/conversations/{conversation_id}/items"
OPENAI_ENDPOINT = "https://api.openai.com"
_PROJECT_PATH = re.compile(r"/api/projects/[^/]+$")
_AZURE_ROLE = "Cognitive Services OpenAI User"


def base_url(target: TargetSettings) -> str:
    """The URL ``/conversations`` is appended to, without a trailing slash."""
    endpoint = (target.endpoint or "").rstrip("/")
    if target.profile == "openai":
        endpoint = endpoint or OPENAI_ENDPOINT
        url = endpoint if endpoint.endswith("/v1") else f"{endpoint}/v1"
    elif not endpoint:
        example = {
            "foundry": "https://<resource>.services.ai.azure.com",
            "azure": "https://<resource>.openai.azure.com",
        }[target.profile]
        raise ConfigError(
            f"migrate.target.endpoint is not set for the {target.profile} target; set"
            f" THREADSYNC_MIGRATE__TARGET__ENDPOINT, e.g. {example}"
        )
    elif target.profile == "foundry":
        if not _PROJECT_PATH.search(endpoint):
            if not target.project:
                raise ConfigError(
                    "migrate.target.project is not set for the foundry target; set"
                    " THREADSYNC_MIGRATE__TARGET__PROJECT or use the project endpoint"
                    " https://<resource>.services.ai.azure.com/api/projects/<name>"
                )
            endpoint = f"{endpoint}/api/projects/{quote(target.project, safe='')}"
        url = f"{endpoint}/openai/v1"
    else:
        url = endpoint if endpoint.endswith("/openai/v1") else f"{endpoint}/openai/v1"
    _check_scheme(url, target)
    return url


def _check_scheme(url: str, target: TargetSettings) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"migrate.target.endpoint: {url!r} is not an http(s) URL")
    insecure = parts.scheme == "http" and not is_loopback(parts.hostname)
    if insecure and not target.allow_insecure_http:
        raise ConfigError(
            f"migrate.target.endpoint: plain http:// to {parts.hostname} would send the"
            " credential unencrypted; use https://, or set"
            " THREADSYNC_MIGRATE__TARGET__ALLOW_INSECURE_HTTP=true"
        )


def lists_conversations(profile: str) -> bool:
    """Whether the target lists conversations, so a create whose answer was lost can be found
    again by its metadata: Foundry only (OpenAI's API has no list; Azure's is unverified)."""
    return profile == "foundry"


def target_key(target: TargetSettings) -> str:
    """How the ledger names this destination: profile and base URL (no credential)."""
    return f"{target.profile} {base_url(target)}"


def credential_headers(target: TargetSettings) -> dict[str, str]:
    """The static credential header for ``auth = key``; none for ``auth = entra``.

    OpenAI takes the key as a bearer token; Foundry and Azure as ``api-key``. With Entra every
    request carries a fresh token instead (:func:`target_tokens`).
    """
    if target.auth == "entra":
        return {}
    secret = target.key()
    key = secret.get_secret_value() if secret is not None else ""
    if not key:
        raise ConfigError(
            f"no key for the {target.profile} migration target; set"
            " THREADSYNC_MIGRATE__TARGET__API_KEY or name a key file with"
            " THREADSYNC_MIGRATE__TARGET__API_KEY_FILE"
        )
    register_secret(key)
    if target.profile == "openai":
        return {"Authorization": f"Bearer {key}"}
    return {"api-key": key}


def target_tokens(target: TargetSettings) -> EntraTokens | None:
    """For ``auth = entra``: the process's token for ``entra_scope`` from the credential
    ``migrate.target.credential`` names (the same seam and refresh as the source's tokens)."""
    if target.auth != "entra":
        return None
    if target.profile == "openai":
        raise ConfigError(
            "migrate.target.auth = entra: the openai target (api.openai.com) takes API keys"
            " only; use migrate.target.auth = key, or the foundry or azure target for Entra"
        )
    from worker.client import entra  # noqa: PLC0415 - the optional azure extra

    choice = entra.CredentialChoice(
        target.credential,
        setting="migrate.target.credential",
        variable="THREADSYNC_MIGRATE__TARGET__CREDENTIAL",
        auth_setting="migrate.target.auth",
    )
    return EntraTokens(entra.fetcher_of(choice, target.entra_scope))


class ConversationsClient(ApiClient):
    """Create conversations, append and list items, set metadata; list conversations (Foundry)."""

    def __init__(
        self,
        target: TargetSettings,
        retry: RetrySettings | None = None,
        *,
        tokens: EntraTokens | None = None,
        **kwargs: Any,
    ) -> None:
        """``tokens`` replaces the Entra token source of ``auth = entra`` (tests)."""
        built = Target(
            base_url=base_url(target),
            headers={"User-Agent": USER_AGENT, **credential_headers(target)},
        )
        if target.auth == "entra" and tokens is None:
            tokens = target_tokens(target)
        api = ApiSettings(
            connect_timeout=target.connect_timeout,
            read_timeout=target.read_timeout,
            # With Entra, ApiClient sends each request a fresh token and renews once on a 401.
            auth="entra" if target.auth == "entra" else None,
        )
        super().__init__(api, retry or RetrySettings(), target=built, tokens=tokens, **kwargs)
        host = urlsplit(built.base_url).hostname or "?"
        self._host = f"the host {host} (migrate.target.endpoint) and the network"
        self._target_profile = target.profile
        self.lists_conversations = lists_conversations(target.profile)

    # A refused token names the target's settings, not ``[api]``'s.
    scope_setting = "migrate.target.entra_scope"
    grant_where = " on the target"

    def entra_role(self) -> str:
        return "Azure AI User" if self._target_profile == "foundry" else _AZURE_ROLE

    async def create_conversation(
        self, items: list[dict[str, Any]], metadata: dict[str, str]
    ) -> dict[str, Any]:
        # An empty create (targets that cannot list conversations) sends metadata only.
        payload: dict[str, Any] = {"metadata": metadata, **({"items": items} if items else {})}
        return await self._call(
            "POST", CONVERSATIONS, {}, parse_object, json=payload, repeatable=False
        )

    async def append_items(
        self, conversation_id: str, items: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        ids = {"conversation_id": conversation_id}
        page = await self._call(
            "POST", ITEMS, ids, parse_page, json={"items": items}, repeatable=False
        )
        return page.data

    async def list_items(
        self,
        conversation_id: str,
        *,
        limit: int = 100,
        order: str = "desc",
        after: str | None = None,
    ) -> MessagePage:
        params = {"limit": str(limit), "order": order, **({"after": after} if after else {})}
        ids = {"conversation_id": conversation_id}
        return await self._call("GET", ITEMS, ids, parse_page, params=params)

    async def set_metadata(self, conversation_id: str, metadata: dict[str, str]) -> dict[str, Any]:
        ids = {"conversation_id": conversation_id}
        return await self._call(
            "POST", CONVERSATION, ids, parse_object, json={"metadata": metadata}, repeatable=True
        )

    async def list_conversations(self, *, after: str | None = None) -> MessagePage:
        """Foundry only (OpenAI has no list endpoint): newest first, 100 a page."""
        params = {"limit": "100", "order": "desc", **({"after": after} if after else {})}
        return await self._call("GET", CONVERSATIONS, {}, parse_page, params=params)
