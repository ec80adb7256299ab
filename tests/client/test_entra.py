"""Entra tokens for real: azure-identity's own ManagedIdentityCredential fetches them from the
emulator's App Service managed-identity endpoint over a loopback socket, and the emulator's API
checks them (expiry, audience, key refused on Foundry)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.pipeline.transport import AsyncHttpTransport, AsyncioRequestsTransport
from azure.identity.aio import ManagedIdentityCredential
from pydantic import SecretStr

from tests.harness import use_managed_identity
from worker.client import ApiClient
from worker.client.auth import EntraTokens
from worker.client.entra import async_transport, fetcher_for
from worker.config import ApiSettings, Profile
from worker.emulator import Emulator, ManualClock, serve_in_thread
from worker.emulator.identity import TOKEN_PATH, Identity
from worker.errors import AuthError, ConfigError, CredentialError

HEADER = "test-identity-header"


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(seed=5, identity=Identity(lifetime=3600, header=HEADER, entra="foundry"))


@pytest.fixture
def served(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with serve_in_thread(emulator) as base_url:
        use_managed_identity(monkeypatch, base_url, HEADER)
        yield base_url


def foundry(base_url: str, **overrides: Any) -> ApiSettings:
    values: dict[str, Any] = {
        "profile": Profile.FOUNDRY,
        "endpoint": base_url,
        "project": "demo",
        "auth": "entra",
        "credential": "managed-identity",
    }
    values.update(overrides)
    return ApiSettings(**values)


@pytest.mark.anyio
async def test_async_transport_is_azure_cores_requests_transport(
    served: str, emulator: Emulator
) -> None:
    """The seam's assumption: azure-core 1.41 ships AsyncioRequestsTransport, an async
    transport needing no aiohttp, which azure-identity's async credentials take as
    ``transport=``. If azure-core drops or changes it, this fails first."""
    transport = async_transport()
    assert isinstance(transport, AsyncioRequestsTransport)
    assert isinstance(transport, AsyncHttpTransport)
    async with ManagedIdentityCredential(transport=transport) as credential:
        info = await credential.get_token_info("https://ai.azure.com/.default")
    assert info.token in emulator.identity.tokens
    # Exactly the expiry the endpoint issued (its clock + the 3600 s lifetime), read back by
    # azure-identity: compared with what was issued, not with this machine's clock.
    assert info.expires_on == emulator.identity.tokens[info.token].expires_on


@pytest.mark.anyio
async def test_one_managed_identity_token_serves_every_request(
    served: str, emulator: Emulator
) -> None:
    thread = emulator.seed(threads=1, messages=30)[0]
    async with ApiClient(foundry(served)) as client:
        for _ in range(5):
            page = await client.list_messages(thread, limit=10)
            assert len(page.data) == 10
        assert client.tokens is not None
    assert emulator.identity.issued == 1
    assert emulator.identity.rejected == 0


@pytest.mark.anyio
async def test_foundry_refuses_the_key_where_it_takes_tokens_only(
    served: str, emulator: Emulator
) -> None:
    """The emulator in entra=foundry mode, like the real service: a key is no Entra token."""
    thread = emulator.seed(threads=1, messages=1)[0]
    api = foundry(served, auth="bearer", api_key=SecretStr(emulator.api_key))
    async with ApiClient(api) as client:
        with pytest.raises(AuthError, match=r"HTTP 401: Unauthorized\. Access token is"):
            await client.get_message(thread, "msg_x")


@pytest.mark.anyio
async def test_a_token_for_the_wrong_audience_fails_once_renewed_naming_the_scope(
    served: str, emulator: Emulator
) -> None:
    thread = emulator.seed(threads=1, messages=1)[0]
    api = foundry(served, token_scope="https://cognitiveservices.azure.com/.default")
    async with ApiClient(api) as client:
        with pytest.raises(AuthError) as caught:
            await client.list_messages(thread)
    message = str(caught.value)
    assert "audience is incorrect (https://ai.azure.com)" in message
    assert "api.token_scope (https://cognitiveservices.azure.com/.default)" in message
    assert "Azure AI User" in message
    assert emulator.identity.issued == 2  # the first token, and one renewal: no loop


@pytest.mark.anyio
async def test_azure_profile_takes_tokens_and_keys(served: str, emulator: Emulator) -> None:
    thread = emulator.seed(threads=1, messages=2)[0]
    api = ApiSettings(endpoint=served, auth="entra", credential="managed-identity")
    async with ApiClient(api) as client:
        assert len((await client.list_messages(thread)).data) == 2
    assert emulator.identity.issued == 1


@pytest.mark.anyio
async def test_azure_v1_endpoint_with_tokens_through_the_openai_profile(
    served: str, emulator: Emulator
) -> None:
    thread = emulator.seed(threads=1, messages=2)[0]
    api = ApiSettings(
        profile=Profile.OPENAI,
        endpoint=served + "/openai/v1/",
        auth="entra",
        credential="managed-identity",
    )
    async with ApiClient(api) as client:
        assert len((await client.list_messages(thread)).data) == 2
    assert emulator.identity.issued == 1
    assert "GET /openai/v1/threads/{thread_id}/messages" in emulator.stats()["routes"]


@pytest.mark.anyio
async def test_the_token_endpoint_down_is_a_clear_error_and_recovery_follows(
    served: str, emulator: Emulator
) -> None:
    thread = emulator.seed(threads=1, messages=2)[0]
    emulator.configure_identity(outage={"status": 503, "times": None})
    clock = ManualClock(time.time())
    api = foundry(served)
    tokens = EntraTokens(fetcher_for(api), clock=clock)
    async with ApiClient(api, tokens=tokens) as client:
        with pytest.raises(CredentialError) as caught:
            await client.list_messages(thread)
        assert str(caught.value) == (
            "no Entra token from api.credential=managed-identity for"
            " https://ai.azure.com/.default: HTTP 503: The managed identity endpoint is"
            " unavailable."
        )
        emulator.configure_identity(outage=None)
        clock.now += 1.0  # past the renewal backoff
        assert len((await client.list_messages(thread)).data) == 2


@pytest.mark.anyio
async def test_a_refused_connection_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDENTITY_ENDPOINT", "http://127.0.0.1:9" + TOKEN_PATH)
    monkeypatch.setenv("IDENTITY_HEADER", HEADER)
    fetcher = fetcher_for(foundry("http://127.0.0.1:1"))
    with pytest.raises(CredentialError, match="Connection refused"):
        await fetcher.fetch()


def test_without_azure_identity_entra_fails_at_start_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "azure.identity.aio", None)
    with pytest.raises(ConfigError) as caught:
        ApiClient(foundry("http://127.0.0.1:1"))
    assert str(caught.value) == (
        "api.auth=entra needs azure-identity, which is not installed:"
        " pip install 'threadsync[azure]'"
    )


def test_client_secret_names_the_missing_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_TENANT_ID", "00000000-0000-0000-0000-000000000000")
    with pytest.raises(ConfigError, match="needs AZURE_CLIENT_ID, AZURE_CLIENT_SECRET"):
        ApiClient(foundry("http://127.0.0.1:1", credential="client-secret"))


def test_entra_is_refused_for_the_openai_platform() -> None:
    api = ApiSettings(profile=Profile.OPENAI, auth="entra")
    with pytest.raises(ConfigError, match=r"api\.openai\.com takes API keys only"):
        ApiClient(api)


def test_scopes_per_profile_and_override() -> None:
    assert foundry("http://x").effective_token_scope() == "https://ai.azure.com/.default"
    azure = ApiSettings(auth="entra")
    assert azure.effective_token_scope() == "https://cognitiveservices.azure.com/.default"
    custom = ApiSettings(auth="entra", token_scope="https://ai.azure.com/.default")
    assert custom.effective_token_scope() == "https://ai.azure.com/.default"
