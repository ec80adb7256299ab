"""The emulator's Entra side: the App Service managed-identity token endpoint, token checks per
family (expiry, audience, key refused), outages from the control plane, Azure's v1 path."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from worker.emulator import Emulator, EmulatorControl, ManualClock, create_app
from worker.emulator.identity import Identity

from .conftest import AZURE_Q, KEY

pytestmark = pytest.mark.anyio
HEADER = "id-header"
FOUNDRY = "/api/projects/demo/threads"
FOUNDRY_Q = {"api-version": "2025-05-01"}
TOKEN_Q = {"api-version": "2019-08-01", "resource": "https://ai.azure.com"}
EXPIRED_FOUNDRY = {
    "statusCode": 401,
    "message": "Unauthorized. Access token is missing, invalid, audience is incorrect"
    " (https://ai.azure.com), or have expired.",
}


@pytest.fixture
def entra_emulator(clock: ManualClock) -> Emulator:
    return Emulator(
        api_key=KEY, clock=clock, identity=Identity(lifetime=20, header=HEADER, entra="foundry")
    )


@pytest.fixture
async def http(entra_emulator: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(entra_emulator))
    async with httpx.AsyncClient(transport=transport, base_url="http://emu") as client:
        yield client


async def _token(http: httpx.AsyncClient, resource: str = "https://ai.azure.com") -> str:
    r = await http.get(
        "/msi/token",
        params={**TOKEN_Q, "resource": resource},
        headers={"X-IDENTITY-HEADER": HEADER},
    )
    assert r.status_code == 200
    return str(r.json()["access_token"])


async def test_token_endpoint_speaks_the_app_service_protocol(
    http: httpx.AsyncClient, clock: ManualClock
) -> None:
    r = await http.get("/msi/token", params=TOKEN_Q, headers={"X-IDENTITY-HEADER": HEADER})
    body = r.json()
    assert r.status_code == 200
    assert set(body) == {"access_token", "expires_on", "resource", "token_type", "client_id"}
    assert body["expires_on"] == str(int(clock() + 20))  # epoch seconds, as a string
    assert body["resource"] == "https://ai.azure.com"
    assert body["token_type"] == "Bearer"


@pytest.mark.parametrize(
    ("params", "headers", "status"),
    [
        (TOKEN_Q, {}, 401),
        (TOKEN_Q, {"X-IDENTITY-HEADER": "wrong"}, 401),
        ({**TOKEN_Q, "api-version": "2017-09-01"}, {"X-IDENTITY-HEADER": HEADER}, 400),
        ({"api-version": "2019-08-01"}, {"X-IDENTITY-HEADER": HEADER}, 400),
    ],
)
async def test_token_endpoint_refuses_bad_requests(
    http: httpx.AsyncClient,
    entra_emulator: Emulator,
    params: dict[str, str],
    headers: dict[str, str],
    status: int,
) -> None:
    r = await http.get("/msi/token", params=params, headers=headers)
    assert r.status_code == status
    assert entra_emulator.identity.issued == 0
    assert entra_emulator.identity.refused == 1


async def test_a_token_works_until_it_expires_then_gets_the_gateway_401(
    http: httpx.AsyncClient, entra_emulator: Emulator, clock: ManualClock
) -> None:
    thread = entra_emulator.seed(threads=1, messages=2)[0]
    token = await _token(http)
    auth = {"Authorization": f"Bearer {token}"}
    url = f"{FOUNDRY}/{thread}/messages"
    assert (await http.get(url, params=FOUNDRY_Q, headers=auth)).status_code == 200
    clock.advance(19.5)
    assert (await http.get(url, params=FOUNDRY_Q, headers=auth)).status_code == 200
    clock.advance(0.5)
    r = await http.get(url, params=FOUNDRY_Q, headers=auth)
    assert r.status_code == 401
    assert orjson.loads(r.content) == EXPIRED_FOUNDRY
    assert entra_emulator.identity.rejected == 1


@pytest.mark.parametrize(
    ("path", "params", "headers"),
    [
        (FOUNDRY + "/t", FOUNDRY_Q, {"Authorization": f"Bearer {KEY}"}),  # the key: no token
        (FOUNDRY + "/t", FOUNDRY_Q, {"Authorization": "Bearer forged"}),
        (FOUNDRY + "/t", FOUNDRY_Q, {"api-key": KEY}),
        (FOUNDRY + "/t", FOUNDRY_Q, {}),
    ],
)
async def test_foundry_takes_only_issued_tokens(
    http: httpx.AsyncClient, path: str, params: dict[str, str], headers: dict[str, str]
) -> None:
    r = await http.get(path, params=params, headers=headers)
    assert r.status_code == 401
    assert orjson.loads(r.content) == EXPIRED_FOUNDRY


async def test_audiences_per_family(http: httpx.AsyncClient, entra_emulator: Emulator) -> None:
    """Foundry takes ai.azure.com tokens only; Azure OpenAI both audiences."""
    thread = entra_emulator.seed(threads=1, messages=1)[0]
    cognitive = await _token(http, "https://cognitiveservices.azure.com")
    ai = await _token(http, "https://ai.azure.com")
    foundry_url, azure_url = f"{FOUNDRY}/{thread}", f"/openai/threads/{thread}"
    for token, url, params, status in [
        (cognitive, foundry_url, FOUNDRY_Q, 401),
        (ai, foundry_url, FOUNDRY_Q, 200),
        (cognitive, azure_url, AZURE_Q, 200),
        (ai, azure_url, AZURE_Q, 200),
    ]:
        r = await http.get(url, params=params, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == status, (url, status)


async def test_key_authentication_disabled_by_policy(
    http: httpx.AsyncClient, entra_emulator: Emulator
) -> None:
    thread = entra_emulator.seed(threads=1, messages=1)[0]
    url = f"/openai/threads/{thread}"
    assert (await http.get(url, params=AZURE_Q, headers={"api-key": KEY})).status_code == 200
    entra_emulator.configure_identity(entra="all")
    r = await http.get(url, params=AZURE_Q, headers={"api-key": KEY})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "AuthenticationTypeDisabled"
    token = await _token(http, "https://cognitiveservices.azure.com")
    r = await http.get(url, params=AZURE_Q, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200


async def test_outage_from_the_control_plane(
    http: httpx.AsyncClient, entra_emulator: Emulator
) -> None:
    control = EmulatorControl(transport=httpx.ASGITransport(app=create_app(entra_emulator)))
    async with control:
        state = await control.configure_identity(outage={"status": 503, "times": 2})
        assert state["outage"] == {"status": 503, "times": 2}
        statuses = [
            (
                await http.get("/msi/token", params=TOKEN_Q, headers={"X-IDENTITY-HEADER": HEADER})
            ).status_code
            for _ in range(3)
        ]
        assert statuses == [503, 503, 200]
        state = await control.identity()
        assert (state["issued"], state["refused"], state["outage"]) == (1, 2, None)
        with pytest.raises(Exception, match="outage is null"):
            await control.configure_identity(outage={"status": 404})


async def test_azure_v1_path_takes_no_dated_version(
    http: httpx.AsyncClient, entra_emulator: Emulator
) -> None:
    """``/openai/v1/threads...``: the key as api-key or bearer, or a token; no api-version (or
    ``preview``); a dated version is refused."""
    thread = entra_emulator.seed(threads=1, messages=3)[0]
    url = f"/openai/v1/threads/{thread}/messages"
    token = await _token(http, "https://ai.azure.com")
    for headers, params, status in [
        ({"Authorization": f"Bearer {KEY}"}, {}, 200),
        ({"api-key": KEY}, {"api-version": "preview"}, 200),
        ({"Authorization": f"Bearer {token}"}, {}, 200),
        ({"api-key": KEY}, AZURE_Q, 400),
        ({"api-key": "wrong"}, {}, 401),
    ]:
        r = await http.get(url, params=params, headers=headers)
        assert r.status_code == status, (headers, params)
    stats = entra_emulator.stats()["routes"]
    assert "GET /openai/v1/threads/{thread_id}/messages" in stats


async def test_conversation_routes_check_tokens_and_keys_as_the_messages_routes(
    http: httpx.AsyncClient, entra_emulator: Emulator, clock: ManualClock
) -> None:
    """The migration target: a Foundry project's Conversations take an issued token and refuse
    the key under ``foundry``; an expired token is refused; ``all`` disables Azure's key (403)."""
    foundry = "/api/projects/demo/openai/v1/conversations"
    azure = "/openai/v1/conversations"
    token = await _token(http)
    ok = await http.post(foundry, json={}, headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200
    keyed = await http.post(foundry, json={}, headers={"api-key": KEY})
    assert (keyed.status_code, keyed.json()) == (401, EXPIRED_FOUNDRY)
    assert (await http.post(azure, json={}, headers={"api-key": KEY})).status_code == 200
    clock.advance(21)
    expired = await http.post(foundry, json={}, headers={"Authorization": f"Bearer {token}"})
    assert (expired.status_code, expired.json()) == (401, EXPIRED_FOUNDRY)
    entra_emulator.configure_identity(entra="all")
    disabled = await http.post(azure, json={}, headers={"api-key": KEY})
    assert disabled.status_code == 403
    assert disabled.json()["error"]["code"] == "AuthenticationTypeDisabled"
    assert len(entra_emulator.conversations.by_id) == 2
