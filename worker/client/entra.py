"""The one seam to azure-identity and azure-core (the optional ``azure`` extra).

It builds the async credential ``api.credential`` names, fetches tokens with ``get_token_info``
and translates azure-core's errors into :class:`CredentialError`, once.

Two choices live here and nowhere else:

- **Transport.** azure-identity's async credentials default to azure-core's aiohttp transport,
  and threadsync does not install aiohttp. azure-core ships ``AsyncioRequestsTransport`` (the
  ``requests`` transport azure-core already depends on, run in the event loop's executor), a
  public transport every credential takes as ``transport=``; a token an hour does not need more.
  ``tests/client/test_entra.py::test_async_transport_is_azure_cores_requests_transport`` names
  this assumption.
- **A credential per token.** :class:`~worker.client.auth.EntraTokens` is the process's one
  cache. azure-identity's own cache would answer a renewal asked within 30 s of the previous one,
  or a renewal forced by a 401, with the very token being replaced; a fresh credential asks the
  endpoint. Built once an hour (or after a 401), it costs nothing that matters.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from worker.client.auth import Token
from worker.config import ApiSettings, CredentialKind
from worker.errors import ConfigError, CredentialError
from worker.logs import register_secret, scrub

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncSupportsTokenInfo
    from azure.core.pipeline.transport import AsyncHttpTransport

EXTRA = "pip install 'threadsync[azure]'"

# The variables each explicit credential reads (named when one is missing).
_REQUIRED_ENV = {
    "client-secret": ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"),
    "workload-identity": ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_FEDERATED_TOKEN_FILE"),
}

CredentialFactory = Callable[[], "AsyncSupportsTokenInfo"]


def async_transport() -> AsyncHttpTransport[Any, Any]:
    """The HTTP transport every credential gets (see the module docstring)."""
    from azure.core.pipeline.transport import AsyncioRequestsTransport  # noqa: PLC0415

    transport: AsyncHttpTransport[Any, Any] = AsyncioRequestsTransport()
    return transport


def require_extra(auth_setting: str = "api.auth") -> None:
    """A ConfigError naming the extra when azure-identity is not installed."""
    try:
        import azure.identity.aio  # noqa: F401, PLC0415
    except ImportError as exc:
        raise ConfigError(
            f"{auth_setting}=entra needs azure-identity, which is not installed: {EXTRA}"
        ) from exc


@dataclass(frozen=True)
class CredentialChoice:
    """Which credential, and the setting names messages give back to the user."""

    kind: CredentialKind
    setting: str = "api.credential"  # where ``kind`` was configured
    variable: str = "THREADSYNC_API__CREDENTIAL"  # how to choose another
    auth_setting: str = "api.auth"  # the setting that asked for Entra

    @property
    def description(self) -> str:
        return f"{self.setting}={self.kind}"


def credential_factory(api: ApiSettings | CredentialChoice) -> CredentialFactory:
    """A function building the configured credential; checks the environment it needs now."""
    choice = api if isinstance(api, CredentialChoice) else CredentialChoice(api.credential)
    require_extra(choice.auth_setting)
    from azure.identity import aio as identity  # noqa: PLC0415

    # azure-identity logs each failure itself, on stderr when logging is not configured (several
    # lines, breaking JSON logs); threadsync logs it once as auth.token_failed.
    logging.getLogger("azure").addHandler(logging.NullHandler())

    kind = choice.kind
    missing = [name for name in _REQUIRED_ENV.get(kind, ()) if not os.environ.get(name)]
    if missing:
        raise ConfigError(
            f"{choice.description} needs {', '.join(missing)} in the environment; set them,"
            f" or choose another {choice.variable}"
        )
    env = os.environ
    register_secret(env.get("AZURE_CLIENT_SECRET"))

    def build() -> AsyncSupportsTokenInfo:
        if kind == "azure-cli":
            return identity.AzureCliCredential()
        transport = async_transport()
        if kind == "managed-identity":
            # AZURE_CLIENT_ID picks a user-assigned identity, as in DefaultAzureCredential.
            return identity.ManagedIdentityCredential(
                client_id=env.get("AZURE_CLIENT_ID") or None, transport=transport
            )
        if kind == "workload-identity":
            return identity.WorkloadIdentityCredential(transport=transport)
        if kind == "client-secret":
            return identity.ClientSecretCredential(
                env["AZURE_TENANT_ID"],
                env["AZURE_CLIENT_ID"],
                env["AZURE_CLIENT_SECRET"],
                transport=transport,
            )
        return identity.DefaultAzureCredential(transport=transport)

    try:
        build()  # a bad environment (an invalid tenant id, ...) is a start-up error
    except ValueError as exc:
        raise ConfigError(f"{choice.description}: {_one_line(exc)}") from exc
    return build


class AzureIdentityFetcher:
    """A :class:`~worker.client.auth.TokenFetcher` over azure-identity credentials."""

    def __init__(self, scope: str, description: str, make: CredentialFactory) -> None:
        self.scope = scope
        self.description = description
        self._make = make

    async def fetch(self) -> Token:
        from azure.core.exceptions import AzureError  # noqa: PLC0415

        credential = self._make()
        try:
            info = await credential.get_token_info(self.scope)
        except (AzureError, ValueError, OSError) as exc:
            raise CredentialError(
                f"no Entra token from {self.description} for {self.scope}: {_one_line(exc)}"
            ) from exc
        finally:
            await credential.close()
        refresh_on = info.refresh_on
        return Token(info.token, float(info.expires_on), float(refresh_on) if refresh_on else None)

    async def aclose(self) -> None:
        """Nothing held between tokens: each credential is closed after its fetch."""


def fetcher_for(api: ApiSettings, make: CredentialFactory | None = None) -> AzureIdentityFetcher:
    """The fetcher ``api`` configures; ``make`` replaces the credential (tests, stubs)."""
    scope = api.effective_token_scope()
    description = f"api.credential={api.credential}"
    return AzureIdentityFetcher(scope, description, make or credential_factory(api))


def fetcher_of(choice: CredentialChoice, scope: str) -> AzureIdentityFetcher:
    """The fetcher for another service than ``[api]`` (the migration target), named by its own
    settings in every message."""
    return AzureIdentityFetcher(scope, choice.description, credential_factory(choice))


def _one_line(exc: BaseException) -> str:
    """One line from an azure-core error: its status when it has one, its message (whose lines
    repeat themselves for HTTP errors, and list every attempt for DefaultAzureCredential)."""
    text = str(getattr(exc, "message", None) or exc or type(exc).__name__)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    status = getattr(exc, "status_code", None)
    if status is not None:
        lines = lines[:1]
    text = " ".join(lines).removeprefix("(None) ")
    return scrub(f"HTTP {status}: {text}" if status is not None else text)[:600]
