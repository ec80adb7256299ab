"""How the client reads a 404 (and the other answers a wrong configuration gets), against the
emulator answering each plausible form a real service might use."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from worker.client import ApiClient
from worker.client.api import blamed_setting, not_found_subject
from worker.config import ApiSettings, Profile, RetrySettings
from worker.emulator import Emulator
from worker.errors import (
    ApiError,
    AuthError,
    NotFoundError,
    PermanentError,
    TransientError,
    UnreachableError,
)
from worker.testing import SleepRecorder, emulated_client

pytestmark = pytest.mark.anyio

KEY = "sk-test-misconfig-0123"


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(api_key=KEY, seed=1)


async def answer(emulator: Emulator, thread_id: str, **api: object) -> ApiError:
    async with emulated_client(emulator, **api) as client:  # type: ignore[arg-type]
        with pytest.raises(ApiError) as caught:
            await client.list_messages(thread_id, limit=1, order="desc")
    return caught.value


@pytest.mark.parametrize(
    ("mode", "fatal"),
    [("family", False), ("resource", False), ("invalid_url", True), ("bare", False)],
)
async def test_an_endpoint_with_a_path_appended(emulator: Emulator, mode: str, fatal: bool) -> None:
    """``AZURE_OPENAI_ENDPOINT=https://res.openai.azure.com/openai``: an answer naming the path
    stops the run by itself; a generic 404 is left to the run (no thread answered)."""
    (thread,) = emulator.seed(seed=2, threads=1, messages=2)
    emulator.set_behaviour(unknown_route=mode)
    exc = await answer(emulator, thread, endpoint="http://127.0.0.1:1/openai")
    assert exc.status == 404
    assert exc.fatal is fatal
    if fatal:
        assert exc.suspect is not None
        assert "AZURE_OPENAI_ENDPOINT" in exc.suspect
    else:
        assert isinstance(exc, NotFoundError)
        assert exc.subject == "unknown"


@pytest.mark.parametrize(
    ("mode", "fatal"), [("resource", True), ("unsupported", True), ("bare", False)]
)
async def test_an_api_version_the_service_does_not_serve(
    emulator: Emulator, mode: str, fatal: bool
) -> None:
    (thread,) = emulator.seed(seed=3, threads=1, messages=2)
    emulator.set_behaviour(unknown_version=mode)
    exc = await answer(emulator, thread, api_version="2023-01-01")
    assert exc.fatal is fatal
    if fatal:
        assert isinstance(exc, PermanentError)
        assert exc.suspect is not None
        assert "OPENAI_API_VERSION" in exc.suspect
    else:
        assert isinstance(exc, NotFoundError)
        assert exc.subject == "unknown"


async def test_the_openai_root_under_the_azure_profile(emulator: Emulator) -> None:
    """An OpenAI base URL (``.../v1``) kept with the azure profile: ``/v1/openai/threads``."""
    (thread,) = emulator.seed(seed=4, threads=1, messages=2)
    exc = await answer(emulator, thread, endpoint="http://127.0.0.1:1/v1")
    assert exc.fatal
    assert "Invalid URL" in exc.message
    assert exc.suspect is not None
    assert "api.profile" in exc.suspect


@pytest.mark.parametrize(
    ("mode", "subject"), [("named", "thread"), ("resource", "unknown"), ("bare", "unknown")]
)
async def test_an_unknown_thread(emulator: Emulator, mode: str, subject: str) -> None:
    """Never fatal: whether it means gone is the run's decision."""
    emulator.set_behaviour(unknown_thread=mode)
    exc = await answer(emulator, "thread_nope")
    assert isinstance(exc, NotFoundError)
    assert exc.subject == subject
    assert not exc.fatal


async def test_a_wrong_key_says_its_status_once_and_names_the_variable(
    emulator: Emulator,
) -> None:
    (thread,) = emulator.seed(seed=5, threads=1, messages=2)
    exc = await answer(emulator, thread, api_key=SecretStr("sk-wrong"))
    assert isinstance(exc, AuthError)
    assert exc.fatal
    assert "HTTP 401: Access denied" in exc.message
    assert "401 401" not in exc.message
    assert exc.suspect == "AZURE_OPENAI_API_KEY"


@pytest.mark.parametrize("error", [httpx.ConnectError, httpx.ConnectTimeout])
async def test_no_connection_on_any_attempt_names_the_host(
    error: type[httpx.TransportError],
) -> None:
    """Refused, a DNS failure, or no handshake in time, on every attempt."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise error("[Errno 111] Connection refused", request=request)

    sleep = SleepRecorder()
    api = ApiSettings(
        profile=Profile.AZURE, endpoint="https://myres.openai.azure.com", api_key=SecretStr(KEY)
    )
    async with ApiClient(
        api, RetrySettings(max_attempts=3), transport=httpx.MockTransport(refuse), sleep=sleep
    ) as client:
        with pytest.raises(UnreachableError) as caught:
            await client.list_messages("thread_a")
    assert caught.value.fatal
    assert caught.value.suspect is not None
    assert "myres.openai.azure.com" in caught.value.suspect
    assert len(sleep.waits) == 2  # three attempts, then it gave up


async def test_a_connection_that_fails_once_is_not_unreachable() -> None:
    """Refused, then a dropped answer: a flaky network, not a wrong host."""
    calls: list[int] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        raise httpx.ReadError("reset", request=request)

    api = ApiSettings(profile=Profile.AZURE, endpoint="https://res.example", api_key=SecretStr(KEY))
    async with ApiClient(
        api,
        RetrySettings(max_attempts=2),
        transport=httpx.MockTransport(flaky),
        sleep=SleepRecorder(),
    ) as client:
        with pytest.raises(TransientError) as caught:
            await client.list_messages("thread_a")
    assert not isinstance(caught.value, UnreachableError)
    assert not caught.value.fatal


@pytest.mark.parametrize(
    ("code", "message", "param", "blamed"),
    [
        ("404", "Resource not found", "api-version", "OPENAI_API_VERSION"),
        (
            "UnsupportedApiVersion",
            "The HTTP resource ... does not support the API version '1'",
            None,
            "OPENAI_API_VERSION",
        ),
        (
            "MissingApiVersionParameter",
            "Missing required query parameter",
            None,
            "OPENAI_API_VERSION",
        ),
        (
            None,
            "Invalid URL (GET /v1/openai/threads/thread_a/messages)",
            None,
            "AZURE_OPENAI_ENDPOINT",
        ),
        ("unknown_url", "Unknown request URL: GET /x", None, "AZURE_OPENAI_ENDPOINT"),
        ("404", "Resource not found", None, None),
        (None, "No thread found with id 'thread_a'.", None, None),
        ("invalid_value", "Invalid 'image_url': not a valid URL.", "content", None),
    ],
)
def test_which_answers_blame_a_setting(
    code: str | None, message: str, param: str | None, blamed: str | None
) -> None:
    api = ApiSettings(profile=Profile.AZURE, endpoint="https://res.example", api_key=SecretStr(KEY))
    found = blamed_setting(api, code, message, param)
    assert (found is None) if blamed is None else (found is not None and blamed in found)


@pytest.mark.parametrize(
    ("message", "subject"),
    [
        ("No thread found with id 'thread_a'.", "thread"),
        ("Thread not found.", "thread"),
        ("'thread_a' does not exist", "thread"),
        ("No message found with id 'msg_1'.", "message"),
        ("Resource not found", "unknown"),
        (None, "unknown"),
    ],
)
def test_what_a_404_says_is_missing(message: str | None, subject: str) -> None:
    assert not_found_subject({"thread_id": "thread_a"}, message) == subject
