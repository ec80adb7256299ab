"""The client's retry loop and error translation, driven by scripted MockTransport answers."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from tests.client.conftest import KEY, MESSAGE, azure, make_client, page_body, settings_for
from worker.client import Pacer
from worker.config import Profile, RetrySettings
from worker.errors import (
    AuthError,
    ConfigError,
    NotFoundError,
    ParkedError,
    PermanentError,
    TransientError,
)
from worker.logs import scrub
from worker.testing import FakeClock, RecordingEvents, Script, ok, status


def _drop(exc_type: type[httpx.TransportError]) -> Any:
    def raise_it(request: httpx.Request) -> httpx.Response:
        raise exc_type("boom", request=request)

    return raise_it


@pytest.mark.anyio
@pytest.mark.parametrize("code", [408, 409, 429, 500, 502, 503, 504])
async def test_get_retries_each_retryable_status(code: int) -> None:
    """A GET answered with a retryable status is sent again and the second answer is returned."""
    clock = FakeClock()
    script = Script(status(code), ok(MESSAGE))
    async with make_client(script, clock) as client:
        assert await client.get_message("thread_1", "msg_1") == MESSAGE
    assert len(script.requests) == 2
    assert len(clock.sleeps) == 1
    assert 0.25 <= clock.sleeps[0] <= 0.5  # first backoff step, equal jitter


@pytest.mark.anyio
@pytest.mark.parametrize(
    "exc_type",
    [httpx.ReadTimeout, httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError],
)
async def test_get_retries_transport_errors(exc_type: type[httpx.TransportError]) -> None:
    """Timeouts, refused and dropped connections are retried on a GET."""
    script = Script(_drop(exc_type), ok(MESSAGE))
    async with make_client(script, FakeClock()) as client:
        assert await client.get_thread("thread_1") == MESSAGE
    assert len(script.requests) == 2


@pytest.mark.anyio
async def test_truncated_json_is_retried() -> None:
    """A 200 whose body was cut is retried, and logged as an invalid body."""
    page = page_body(["m1"], False)
    script = Script(httpx.Response(200, content=b'{"data":[{"id":"m1"'), ok(page))
    with capture_logs() as logs:
        async with make_client(script, FakeClock()) as client:
            result = await client.list_messages("thread_1")
    assert [m["id"] for m in result.data] == ["m1"]
    assert logs[0]["event"] == "api.retry"
    assert logs[0]["error"] == "invalid_body"


@pytest.mark.anyio
async def test_retry_after_ms_wins() -> None:
    """The wait is the server's retry-after-ms, not retry-after and not the backoff."""
    clock = FakeClock()
    script = Script(status(503, **{"retry-after-ms": "1500", "retry-after": "30"}), ok(MESSAGE))
    async with make_client(script, clock) as client:
        await client.get_message("thread_1", "msg_1")
    assert clock.sleeps == [1.5]


@pytest.mark.anyio
async def test_retry_after_seconds_honoured() -> None:
    """Without retry-after-ms, retry-after seconds are waited verbatim."""
    clock = FakeClock()
    script = Script(status(503, **{"retry-after": "12"}), ok(MESSAGE))
    async with make_client(script, clock) as client:
        await client.get_message("thread_1", "msg_1")
    assert clock.sleeps == [12.0]


@pytest.mark.anyio
async def test_long_server_wait_parks() -> None:
    """A wait above max_server_wait raises ParkedError at once, without sleeping or pausing."""
    clock = FakeClock()
    pacer = Pacer(None, clock=clock.now, sleep=clock.sleep)
    script = Script(status(429, **{"retry-after": "120", "x-request-id": "req-9"}))
    retry = RetrySettings(max_server_wait=60)
    async with make_client(script, clock, retry=retry, pacer=pacer) as client:
        with pytest.raises(ParkedError) as info:
            await client.list_messages("thread_1")
    assert info.value.retry_after == 120.0
    assert (info.value.status, info.value.request_id) == (429, "req-9")
    assert clock.sleeps == []
    assert pacer.paused_until < clock.now()


@pytest.mark.anyio
async def test_429_pauses_every_caller() -> None:
    """A 429 with a wait pauses the shared pacer for that wait and is reported as throttled."""
    clock = FakeClock(start=0.0)
    pacer = Pacer(None, clock=clock.now, sleep=clock.sleep)
    events = RecordingEvents()
    script = Script(status(429, **{"retry-after-ms": "2500"}), ok(MESSAGE))
    async with make_client(script, clock, pacer=pacer, events=events) as client:
        await client.get_message("thread_1", "msg_1")
    assert pacer.paused_until == 2.5
    assert events.throttled == [2.5]
    assert events.retries == [("/threads/{thread_id}/messages/{message_id}", 429, 2.5)]
    assert [r[2] for r in events.responses] == [429, 200]


@pytest.mark.anyio
async def test_gives_up_after_max_attempts() -> None:
    """Retries stop at max_attempts; the last failure's status and request id are kept."""
    script = Script(*[status(503, **{"apim-request-id": f"r{n}"}) for n in range(4)])
    async with make_client(script, FakeClock()) as client:
        with pytest.raises(TransientError, match="gave up after 4 attempts") as info:
            await client.get_message("thread_1", "msg_1")
    assert len(script.requests) == 4
    assert (info.value.status, info.value.request_id) == (503, "r3")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "failure",
    [status(500), status(503, **{"retry-after": "1"}), _drop(httpx.RemoteProtocolError)],
)
async def test_create_message_not_repeated_after_it_may_have_applied(failure: Any) -> None:
    """A create that may have reached the server (5xx, dropped connection) is not sent twice."""
    script = Script(failure, ok(MESSAGE))
    async with make_client(script, FakeClock()) as client:
        with pytest.raises(TransientError, match="not repeated") as info:
            await client.create_message("thread_1", role="user", content="hi")
    assert not isinstance(info.value, ParkedError)
    assert len(script.requests) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    "failure", [status(429, **{"retry-after": "1"}), status(429), _drop(httpx.ConnectError)]
)
async def test_create_repeated_when_nothing_was_done(failure: Any) -> None:
    """A 429 (server did nothing) or a connection never made lets a create be sent again."""
    script = Script(failure, ok(MESSAGE))
    async with make_client(script, FakeClock()) as client:
        assert await client.create_message("thread_1", role="user", content="hi") == MESSAGE
    assert len(script.requests) == 2
    assert script.requests[0].content == script.requests[1].content


@pytest.mark.anyio
async def test_create_thread_not_repeated() -> None:
    """create_thread follows the same rule as create_message."""
    script = Script(status(502), ok({"id": "thread_2"}))
    async with make_client(script, FakeClock()) as client:
        with pytest.raises(TransientError):
            await client.create_thread(metadata={"a": "1"})
    assert len(script.requests) == 1


@pytest.mark.anyio
async def test_modify_is_retried() -> None:
    """The metadata modify (a POST that sets a map) is safe to repeat and is retried."""
    script = Script(status(500), _drop(httpx.ReadError), ok(MESSAGE))
    async with make_client(script, FakeClock()) as client:
        await client.modify_message("thread_1", "msg_1", {"k": "v"})
    assert len(script.requests) == 3
    assert all(r.method == "POST" for r in script.requests)
    assert script.requests[0].content == b'{"metadata":{"k":"v"}}'


@pytest.mark.anyio
async def test_delete_is_retried() -> None:
    """DELETE is retried like a GET."""
    script = Script(status(503), ok({"id": "msg_1", "deleted": True}))
    async with make_client(script, FakeClock()) as client:
        assert (await client.delete_message("thread_1", "msg_1"))["deleted"] is True
    assert [r.method for r in script.requests] == ["DELETE", "DELETE"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        (400, PermanentError),
        (401, AuthError),
        (403, AuthError),
        (404, NotFoundError),
        (422, PermanentError),
    ],
)
async def test_permanent_errors_mapped_with_vendor_fields(
    code: int, error_type: type[PermanentError]
) -> None:
    """4xx answers map once to the project's errors, carrying vendor code, message, request id."""
    body = {"error": {"code": "invalid_value", "message": "Bad cursor", "type": "x"}}
    script = Script(status(code, body, **{"x-ms-request-id": "rid-1"}))
    async with make_client(script, FakeClock()) as client:
        with pytest.raises(error_type) as info:
            await client.list_messages("thread_1", after="msg_0")
    error = info.value
    assert type(error) is error_type
    assert (error.status, error.code, error.request_id) == (code, "invalid_value", "rid-1")
    assert "Bad cursor" in error.message
    assert len(script.requests) == 1


@pytest.mark.anyio
async def test_non_json_error_body_tolerated() -> None:
    """An HTML error page still gives a PermanentError with the status and no vendor code."""
    script = Script(httpx.Response(400, content=b"<html>nope</html>"))
    async with make_client(script, FakeClock()) as client:
        with pytest.raises(PermanentError) as info:
            await client.get_message("thread_1", "msg_1")
    assert (info.value.status, info.value.code) == (400, None)


@pytest.mark.anyio
async def test_retry_log_fields_and_no_secret_anywhere() -> None:
    """api.retry carries attempt, wait, status, method, route template and request id; no log
    record or error message ever holds the key, the ids or the query string."""
    script = Script(
        status(500, {"error": {"message": f"echo {KEY}"}}, **{"x-request-id": "rq-1"}),
        _drop(httpx.ReadTimeout),
        status(503, {"error": {"code": "busy", "message": f"key was {KEY}"}}),
        status(503),
    )
    with capture_logs() as logs:
        async with make_client(script, FakeClock()) as client:
            with pytest.raises(TransientError) as info:
                await client.list_messages("thread_secret", after="msg_x")
    retries = [entry for entry in logs if entry["event"] == "api.retry"]
    assert [r["attempt"] for r in retries] == [1, 2, 3]
    first = retries[0]
    assert first["status"] == 500
    assert first["method"] == "GET"
    assert first["route"] == "/threads/{thread_id}/messages"
    assert first["request_id"] == "rq-1"
    assert first["wait"] > 0
    assert retries[1]["status"] is None
    assert retries[1]["error"] == "ReadTimeout"
    text = repr(logs) + str(info.value) + repr(vars(info.value))
    for leaked in (KEY, "thread_secret", "api-version"):
        assert leaked not in text
    assert scrub(f"x{KEY}x") == "x***x"


@pytest.mark.anyio
async def test_list_messages_query() -> None:
    """list_messages sends only the given parameters, plus api-version."""
    script = Script(ok(page_body([], False)))
    async with make_client(script, FakeClock()) as client:
        page = await client.list_messages("thread_1", limit=50, order="desc", before="msg_9")
    assert page.data == []
    params = dict(script.requests[0].url.params)
    assert params == {
        "api-version": "2024-08-01-preview",
        "limit": "50",
        "order": "desc",
        "before": "msg_9",
    }


@pytest.mark.anyio
async def test_create_message_body() -> None:
    """create_message sends role and content, and attachments/metadata only when given."""
    script = Script(ok(MESSAGE), ok(MESSAGE))
    async with make_client(script, FakeClock()) as client:
        await client.create_message("thread_1", role="user", content="hello")
        await client.create_message("thread_1", role="assistant", content="x", metadata={"a": "b"})
    assert script.requests[0].content == b'{"role":"user","content":"hello"}'
    assert script.requests[1].content == b'{"role":"assistant","content":"x","metadata":{"a":"b"}}'
    assert script.requests[0].headers["content-type"] == "application/json"


@pytest.mark.anyio
async def test_list_threads_foundry_only() -> None:
    """list_threads works on foundry and is a ConfigError elsewhere (no such endpoint)."""
    async with make_client(Script(), FakeClock(), api=azure()) as client:
        with pytest.raises(ConfigError, match="foundry"):
            await client.list_threads()
    script = Script(ok(page_body(["thread_1"], False)))
    api = settings_for(Profile.FOUNDRY)
    async with make_client(script, FakeClock(), api=api) as client:
        page = await client.list_threads(limit=10)
    assert page.first_id == "thread_1"
    assert script.requests[0].url.path == "/api/projects/proj/threads"
    assert script.requests[0].url.params["order"] == "desc"


@pytest.mark.anyio
async def test_cookies_a_server_sets_are_never_sent_back() -> None:
    """The client keeps no cookie jar: an answer's Set-Cookie (a load balancer's affinity
    cookie) changes nothing in the requests that follow."""
    first = ok(page_body([], False))
    first.headers["Set-Cookie"] = "affinity=abc; Path=/"
    script = Script(first, ok(page_body([], False)))
    async with make_client(script, FakeClock()) as client:
        await client.list_messages("thread_1")
        await client.list_messages("thread_1")
    assert [r.headers.get("cookie") for r in script.requests] == [None, None]


@pytest.mark.anyio
async def test_answers_are_freed_when_the_call_returns_not_by_the_cycle_collector() -> None:
    """httpx links a response and its body's stream both ways; the client breaks that cycle, so
    each answer (a page is ~180 KB) is freed by reference counting as soon as it was parsed,
    whether it was used or answered a retried failure."""
    answers: list[weakref.ref[httpx.Response]] = []
    script = Script(status(503), ok(MESSAGE))

    def handler(request: httpx.Request) -> httpx.Response:
        response = script(request)
        answers.append(weakref.ref(response))
        return response

    clock = FakeClock()
    gc.collect()
    gc.disable()
    try:
        async with make_client(handler, clock) as client:
            assert await client.get_message("thread_1", "msg_1") == MESSAGE
            alive = [ref() is not None for ref in answers]
    finally:
        gc.enable()
    assert alive == [False, False]


@pytest.mark.anyio
@pytest.mark.parametrize("profile", [Profile.AZURE, Profile.OPENAI, Profile.FOUNDRY])
async def test_requests_are_the_ones_httpx_would_build(profile: Profile) -> None:
    """The client builds each request itself (one URL parse, not three); every part of it is
    what ``AsyncClient.build_request`` makes of the same call: URL, query, headers, timeout."""
    script = Script(ok(page_body([], False)), ok(MESSAGE))
    async with make_client(script, FakeClock(), settings_for(profile)) as client:
        await client.list_messages("thread 1/x", limit=7, order="asc", after="msg_a")
        await client.create_message("thread_1", role="user", content="hi")
        calls = [
            ("GET", "/threads/thread%201%2Fx/messages",
             {"limit": "7", "order": "asc", "after": "msg_a"}, None),
            ("POST", "/threads/thread_1/messages", None, b'{"role":"user","content":"hi"}'),
        ]  # fmt: skip
        for sent, (method, path, params, content) in zip(script.requests, calls, strict=True):
            headers = {"x-ms-client-request-id": sent.headers["x-ms-client-request-id"]}
            if content is not None:
                headers["Content-Type"] = "application/json"
            wanted = client._http.build_request(
                method, path, params=params, content=content, headers=headers
            )
            assert sent.method == wanted.method
            assert sent.url == wanted.url
            assert sent.content == wanted.content
            assert sent.extensions == wanted.extensions
            assert sorted(sent.headers.multi_items()) == sorted(wanted.headers.multi_items())
