"""Entra tokens with a stub credential: renewal ahead of expiry, one renewal in flight, failures,
the 401 path, and no token anywhere but the Authorization header. Virtual time, no sleeps."""

from __future__ import annotations

import io
from typing import Any

import anyio
import httpx
import pytest

from tests.client.conftest import MESSAGE, make_client, settings_for
from worker import logs
from worker.client import ClientEvents
from worker.client.auth import EntraTokens, Token, refresh_time
from worker.client.entra import AzureIdentityFetcher
from worker.config import Profile
from worker.emulator import Emulator, ManualClock
from worker.emulator.identity import Identity
from worker.errors import AuthError, CredentialError
from worker.testing import (
    EmulatorTransport,
    FakeClock,
    Script,
    SleepRecorder,
    StubFetcher,
    ok,
    status,
)

T0 = 1_800_000_000.0


def entra(**overrides: Any) -> Any:
    return settings_for(Profile.FOUNDRY, auth="entra", **overrides)


# -- the token source alone -----------------------------------------------------------------------


def test_refresh_time_prefers_refresh_on_else_five_minutes_else_half_life() -> None:
    assert refresh_time(Token("t", T0 + 3600, T0 + 1800), T0) == T0 + 1800
    assert refresh_time(Token("t", T0 + 3600), T0) == T0 + 3300
    assert refresh_time(Token("t", T0 + 20), T0) == T0 + 10


@pytest.mark.anyio
async def test_one_token_shared_until_five_minutes_before_expiry() -> None:
    clock = ManualClock(T0)
    fetcher = StubFetcher(clock)
    tokens = EntraTokens(fetcher, clock=clock)
    assert await tokens.token() == "tok-1"
    clock.now = T0 + 3299
    assert [await tokens.token() for _ in range(5)] == ["tok-1"] * 5
    assert fetcher.calls == 1
    clock.now = T0 + 3300
    assert await tokens.token() == "tok-2"
    assert fetcher.calls == 2


@pytest.mark.anyio
async def test_refresh_on_from_the_endpoint_wins() -> None:
    clock = ManualClock(T0)
    fetcher = StubFetcher(clock, lifetime=7200)
    fetcher.refresh_in = 600
    tokens = EntraTokens(fetcher, clock=clock)
    await tokens.token()
    clock.now = T0 + 599
    assert await tokens.token() == "tok-1"
    clock.now = T0 + 600
    assert await tokens.token() == "tok-2"


@pytest.mark.anyio
async def test_64_requests_waiting_share_one_renewal() -> None:
    clock = ManualClock(T0)
    fetcher = StubFetcher(clock)
    fetcher.gate = anyio.Event()
    tokens = EntraTokens(fetcher, clock=clock)
    got: list[str] = []

    async def one() -> None:
        got.append(await tokens.token())

    async with anyio.create_task_group() as tg:
        for _ in range(64):
            tg.start_soon(one)
        await anyio.wait_all_tasks_blocked()
        assert fetcher.calls == 1  # the other 63 wait on the lock, not on the endpoint
        fetcher.gate.set()
    assert got == ["tok-1"] * 64
    assert fetcher.calls == 1


@pytest.mark.anyio
async def test_a_failing_credential_fails_fast_then_recovers_after_backoff() -> None:
    clock = ManualClock(T0)
    fetcher = StubFetcher(clock)
    fetcher.fail = CredentialError("no Entra token from api.credential=stub: HTTP 503: down")
    tokens = EntraTokens(fetcher, clock=clock)
    for _ in range(3):
        with pytest.raises(CredentialError, match="HTTP 503: down"):
            await tokens.token()
    assert fetcher.calls == 1  # within the backoff nobody asks the endpoint again
    clock.now += 1.0
    with pytest.raises(CredentialError):
        await tokens.token()
    assert fetcher.calls == 2
    clock.now += 1.9  # the backoff doubled: 2 s
    with pytest.raises(CredentialError):
        await tokens.token()
    assert fetcher.calls == 2
    fetcher.fail = None
    clock.now += 0.1
    assert await tokens.token() == "tok-1"


@pytest.mark.anyio
async def test_a_failed_renewal_keeps_the_valid_token() -> None:
    clock = ManualClock(T0)
    fetcher = StubFetcher(clock)
    tokens = EntraTokens(fetcher, clock=clock)
    await tokens.token()
    fetcher.fail = CredentialError("endpoint down")
    clock.now = T0 + 3400  # renewal due, token valid for 200 s more
    assert await tokens.token() == "tok-1"
    assert await tokens.token() == "tok-1"
    assert fetcher.calls == 2
    clock.now = T0 + 3600  # expired and the endpoint still down
    with pytest.raises(CredentialError, match="endpoint down"):
        await tokens.token()
    fetcher.fail = None
    clock.now += 60
    assert await tokens.token() == "tok-2"


@pytest.mark.anyio
async def test_renew_after_a_refusal_is_single_flight() -> None:
    clock = ManualClock(T0)
    fetcher = StubFetcher(clock)
    tokens = EntraTokens(fetcher, clock=clock)
    refused = await tokens.token()
    async with anyio.create_task_group() as tg:
        for _ in range(64):
            tg.start_soon(tokens.renew, refused)
    assert fetcher.calls == 2
    assert await tokens.token() == "tok-2"


# -- through the client ---------------------------------------------------------------------------


def _bearer(request: httpx.Request) -> str:
    return request.headers["authorization"].removeprefix("Bearer ")


@pytest.mark.anyio
async def test_a_401_renews_once_and_retries_that_request_once() -> None:
    clock = ManualClock(T0)
    fetcher = StubFetcher(clock)
    script = Script(status(401, {"statusCode": 401, "message": "expired"}), ok(MESSAGE))
    client = make_client(script, FakeClock(), api=entra(), tokens=EntraTokens(fetcher, clock=clock))
    async with client:
        assert (await client.get_message("thread_1", "msg_1"))["id"] == "msg_1"
    assert [_bearer(r) for r in script.requests] == ["tok-1", "tok-2"]


@pytest.mark.anyio
async def test_token_events_reach_the_client_events() -> None:
    clock = ManualClock(T0)

    class Recorder(ClientEvents):
        def __init__(self) -> None:
            self.tokens: list[tuple[str, float | None]] = []

        def on_token(self, outcome: str, expires_on: float | None) -> None:
            self.tokens.append((outcome, expires_on))

    recorder = Recorder()
    fetcher = StubFetcher(clock)
    script = Script(status(401), ok(MESSAGE))
    client = make_client(
        script, FakeClock(), api=entra(), events=recorder, tokens=EntraTokens(fetcher, clock=clock)
    )
    async with client:
        await client.get_message("thread_1", "msg_1")
        fetcher.fail = CredentialError("down")
        clock.now += 3300  # renewal due; it fails and the held token serves on
        assert client.tokens is not None
        assert await client.tokens.token() == "tok-2"
    assert recorder.tokens == [
        ("renewed", T0 + 3600),
        ("refused", None),
        ("renewed", T0 + 3600),
        ("failed", None),
    ]


@pytest.mark.anyio
async def test_a_create_refused_for_its_token_is_sent_again() -> None:
    """A 401 proves nothing was done: even a create (never repeated blindly) is safe to resend."""
    clock = ManualClock(T0)
    script = Script(status(401), ok(MESSAGE))
    client = make_client(
        script, FakeClock(), api=entra(), tokens=EntraTokens(StubFetcher(clock), clock=clock)
    )
    async with client:
        await client.create_message("thread_1", role="user", content="hi")
    assert [r.method for r in script.requests] == ["POST", "POST"]


@pytest.mark.anyio
async def test_a_second_401_is_an_auth_error_naming_role_and_scope_never_a_loop() -> None:
    clock = ManualClock(T0)
    script = Script(status(401, {"statusCode": 401, "message": "Unauthorized."}), status(401))
    client = make_client(
        script, FakeClock(), api=entra(), tokens=EntraTokens(StubFetcher(clock), clock=clock)
    )
    async with client:
        with pytest.raises(AuthError) as caught:
            await client.get_message("thread_1", "msg_1")
    assert len(script.requests) == 2
    message = str(caught.value)
    assert "\n" not in message
    assert "Azure AI User" in message
    assert "api.token_scope (https://ai.azure.com/.default)" in message
    assert "api.credential=stub" in message


@pytest.mark.anyio
async def test_a_403_is_not_retried_and_names_the_role() -> None:
    clock = ManualClock(T0)
    script = Script(status(403, {"error": {"code": "PermissionDenied", "message": "no"}}))
    client = make_client(
        script,
        FakeClock(),
        api=settings_for(Profile.AZURE, auth="entra"),
        tokens=EntraTokens(StubFetcher(clock), clock=clock),
    )
    async with client:
        with pytest.raises(AuthError, match="Cognitive Services OpenAI User"):
            await client.get_message("thread_1", "msg_1")
    assert len(script.requests) == 1


@pytest.mark.anyio
async def test_64_requests_refused_at_once_cost_one_renewal() -> None:
    clock = ManualClock(T0)
    fetcher = StubFetcher(clock)

    def answer(request: httpx.Request) -> httpx.Response:
        return status(401) if _bearer(request) == "tok-1" else ok(MESSAGE)

    script = Script(*([answer] * 128))
    client = make_client(script, FakeClock(), api=entra(), tokens=EntraTokens(fetcher, clock=clock))
    async with client, anyio.create_task_group() as tg:
        for _ in range(64):
            tg.start_soon(client.get_message, "thread_1", "msg_1")
    assert fetcher.calls == 2
    assert len(script.requests) == 128


@pytest.mark.anyio
async def test_a_credential_error_reaches_the_caller_as_one_clear_line() -> None:
    clock = ManualClock(T0)
    fetcher = StubFetcher(clock)
    fetcher.fail = CredentialError("no Entra token from api.credential=stub: HTTP 500: boom")
    client = make_client(
        Script(), FakeClock(), api=entra(), tokens=EntraTokens(fetcher, clock=clock)
    )
    async with client:
        with pytest.raises(CredentialError, match="HTTP 500: boom"):
            await client.get_message("thread_1", "msg_1")


# -- against the emulator's own token checks ------------------------------------------------------


class EmulatorIssued:
    """Tokens from the emulator's identity endpoint logic, in-process (the emulator's clock)."""

    description = "api.credential=stub"
    scope = "https://ai.azure.com/.default"

    def __init__(self, emulator: Emulator, clock: ManualClock) -> None:
        self.emulator = emulator
        self.clock = clock
        self.calls = 0

    async def fetch(self) -> Token:
        self.calls += 1
        import orjson  # noqa: PLC0415

        query = {"api-version": "2019-08-01", "resource": "https://ai.azure.com"}
        body = orjson.loads(
            self.emulator.identity.issue(query, {b"x-identity-header": b"h"}, self.clock())
        )
        return Token(body["access_token"], float(body["expires_on"]))

    async def aclose(self) -> None:
        pass


@pytest.mark.anyio
@pytest.mark.parametrize("skew", [0.0, 60.0])
async def test_a_token_expiring_mid_walk_loses_no_page(skew: float) -> None:
    """Pages of one walk span two token lifetimes. With clocks that agree the token is renewed
    ahead of expiry; with the client's clock a minute behind the server's, the server refuses
    the expired token first, and the 401 path renews it: every page arrives either way."""
    server_clock = ManualClock(T0)
    emulator = Emulator(
        clock=server_clock, identity=Identity(lifetime=20, header="h", entra="foundry")
    )
    thread = emulator.seed(threads=1, messages=50)[0]
    issued = EmulatorIssued(emulator, server_clock)
    client_clock = ManualClock(T0)
    client_clock.now = server_clock() - skew
    api = settings_for(Profile.FOUNDRY, auth="entra", endpoint="http://127.0.0.1:1")
    from worker.client import ApiClient  # noqa: PLC0415

    tokens = EntraTokens(issued, clock=client_clock)
    async with ApiClient(
        api, transport=EmulatorTransport(emulator), sleep=SleepRecorder(), tokens=tokens
    ) as client:
        ids: list[str] = []
        after: str | None = None
        while True:  # a walk as the sync's pages go: after the last id, until no more
            page = await client.list_messages(thread, limit=10, order="asc", after=after)
            ids.extend(m["id"] for m in page.data)
            server_clock.advance(9)
            client_clock.now += 9
            if not page.has_more or not page.data:
                break
            after = page.data[-1]["id"]
    assert ids == [m["id"] for m in emulator.truth()["threads"][thread]]
    assert (emulator.identity.rejected > 0) == (skew > 0)
    assert issued.calls >= (2 if skew else 3)  # the walk outlived its first token


@pytest.mark.anyio
async def test_no_token_reaches_logs_or_errors() -> None:
    out = io.StringIO()
    logs.configure(level="debug", json=True, stream=out)
    try:
        clock = ManualClock(T0)
        fetcher = StubFetcher(clock, prefix="leak-check-")
        script = Script(status(401), status(401))
        client = make_client(
            script, FakeClock(), api=entra(), tokens=EntraTokens(fetcher, clock=clock)
        )
        async with client:
            with pytest.raises(AuthError) as caught:
                await client.get_message("thread_1", "msg_1")
    finally:
        logs.configure(level="info", json=True)
    text = out.getvalue() + str(caught.value) + repr(caught.value)
    assert "auth.token_renewed" in text
    assert "auth.token_refused" in text
    assert "leak-check-" not in text
    assert "leak-check-" not in repr(Token("leak-check-9", T0))
    assert logs.scrub("x leak-check-2 y") == "x *** y"
    # A replaced token is forgotten, not hoarded (a year of hourly tokens would slow every log).
    assert logs.scrub("x leak-check-1 y") == "x leak-check-1 y"


@pytest.mark.anyio
async def test_the_fetcher_translates_azure_errors_once() -> None:
    from azure.core.exceptions import ClientAuthenticationError  # noqa: PLC0415

    class Refusing:
        closed = False

        async def get_token_info(self, *scopes: str, options: Any = None) -> Any:
            raise ClientAuthenticationError(message="AADSTS700016: app not found\nTrace: x")

        async def close(self) -> None:
            Refusing.closed = True

    fetcher = AzureIdentityFetcher(
        "https://ai.azure.com/.default",
        "api.credential=x",
        Refusing,  # type: ignore[arg-type]  # duck-typed like azure-core's protocol
    )
    with pytest.raises(CredentialError) as caught:
        await fetcher.fetch()
    assert str(caught.value) == (
        "no Entra token from api.credential=x for https://ai.azure.com/.default:"
        " AADSTS700016: app not found Trace: x"
    )
    assert Refusing.closed
