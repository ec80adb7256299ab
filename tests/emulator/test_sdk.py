"""The official openai SDK runs a full scenario against the emulator on a loopback port, and every
body the emulator answers in it validates against the OpenAI OpenAPI schemas."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import openai
import orjson
import pytest
import yaml

from worker.emulator import Emulator, FaultRule, ManualClock, create_app, serve_in_thread
from worker.emulator.asgi import ASGIApp, Message, Receive, Scope, Send
from worker.emulator.routes import parse

from .conftest import KEY, SPEC_NAME, VENDORED, VENDORED_ROOTS, _specs_dir, schema_closure

Recorded = list[tuple[str, str, int, bytes]]
SCHEMA_FOR_KIND = {
    "list": "ListMessagesResponse",
    "get": "MessageObject",
    "create": "MessageObject",
    "modify": "MessageObject",
    "delete": "DeleteMessageResponse",
    "thread.create": "ThreadObject",
    "thread.get": "ThreadObject",
    "thread.modify": "ThreadObject",
    "thread.delete": "DeleteThreadResponse",
}


@pytest.fixture(autouse=True)
def _quiet_deprecations() -> Iterator[None]:
    # client.beta.threads... is decorated deprecated in this SDK version.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def recording(app: ASGIApp, log: Recorded) -> ASGIApp:
    """Wrap ``app`` so every HTTP answer (method, path, status, body) lands in ``log``."""

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        status = 0
        chunks: list[bytes] = []

        async def spy(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    log.append((scope["method"], scope["path"], status, b"".join(chunks)))
            await send(message)

        await app(scope, receive, spy)

    return wrapper


@pytest.fixture
def served(clock: ManualClock) -> Iterator[tuple[Emulator, str, Recorded]]:
    emulator = Emulator(api_key=KEY, clock=clock)
    log: Recorded = []
    with serve_in_thread(emulator, app=recording(create_app(emulator), log)) as url:
        yield emulator, url, log


def validate_all(log: Recorded, validate: Callable[[str, Any], None]) -> set[str]:
    """Validate every recorded body; answers the schema names that were exercised."""
    seen: set[str] = set()
    for method, path, status, raw in log:
        body = orjson.loads(raw)
        route = parse(method, path)
        if status != 200:
            name = "ErrorResponse"
        else:
            assert route is not None
            name = SCHEMA_FOR_KIND[route.kind]
        if name == "ListMessagesResponse" and not body["data"]:
            # The spec types first_id/last_id as strings, but an empty page cannot name an id:
            # the emulator (like the real service is believed to) answers null. Pin that, then
            # validate the rest of the body.
            assert body["first_id"] is None
            assert body["last_id"] is None
            body = {**body, "first_id": "", "last_id": ""}
        validate(name, body)
        seen.add(name)
    return seen


def scenario(client: openai.OpenAI, emulator: Emulator, clock: ManualClock) -> None:
    threads = client.beta.threads
    thread = threads.create(
        messages=[{"role": "user", "content": "first"}, {"role": "user", "content": "second"}],
        metadata={"owner": "tests"},
    )
    for i in range(23):
        if i % 4 == 0:
            clock.advance(1)  # a few seconds, many ties inside each
        threads.messages.create(thread.id, role="user", content=f"message {i} \u00e9\U0001f9f5")
    truth = [m["id"] for m in emulator.truth()["threads"][thread.id]]
    assert len(truth) == 25
    for limit in (1, 3, 7, 20, 100):
        asc = [m.id for m in threads.messages.list(thread.id, order="asc", limit=limit)]
        desc = [m.id for m in threads.messages.list(thread.id, order="desc", limit=limit)]
        assert asc == truth
        assert desc == truth[::-1]
    got = threads.messages.retrieve(truth[5], thread_id=thread.id)
    assert got.id == truth[5]
    assert got.content[0].type == "text"
    updated = threads.messages.update(truth[5], thread_id=thread.id, metadata={"k": "v"})
    assert updated.metadata == {"k": "v"}
    gone = threads.messages.delete(truth[6], thread_id=thread.id)
    assert gone.deleted
    remaining = [m.id for m in threads.messages.list(thread.id, order="asc")]
    assert remaining == [i for i in truth if i != truth[6]]
    empty = threads.create()
    assert list(threads.messages.list(empty.id)) == []
    assert threads.retrieve(thread.id).metadata == {"owner": "tests"}
    assert threads.delete(empty.id).deleted

    with pytest.raises(openai.BadRequestError):
        threads.messages.list(thread.id, limit=0)
    with pytest.raises(openai.NotFoundError):
        threads.messages.retrieve("msg_missing", thread_id=thread.id)
    with pytest.raises(openai.AuthenticationError):
        client.with_options(api_key="wrong").beta.threads.retrieve(thread.id)
    emulator.add_fault(FaultRule(fault="429", times=1, route="list", retry_after=2))
    with pytest.raises(openai.RateLimitError) as caught:
        client.with_options(max_retries=0).beta.threads.messages.list(thread.id)
    assert caught.value.response.headers["retry-after-ms"] == "2000"


def test_azure_sync_sdk_scenario(
    served: tuple[Emulator, str, Recorded],
    clock: ManualClock,
    schema_validator: Callable[[str, Any], None],
) -> None:
    """Sync AzureOpenAI: create, paginate both orders at several limits, retrieve, update,
    delete, and the 400/401/404/429 error classes; every body matches the OpenAPI schemas."""
    emulator, url, log = served
    client = openai.AzureOpenAI(
        azure_endpoint=url, api_key=KEY, api_version="2024-08-01-preview", max_retries=0
    )
    scenario(client, emulator, clock)
    seen = validate_all(log, schema_validator)
    assert {"ListMessagesResponse", "MessageObject", "DeleteMessageResponse"} <= seen
    assert "ErrorResponse" in seen


def test_openai_platform_sdk_scenario(
    served: tuple[Emulator, str, Recorded],
    clock: ManualClock,
    schema_validator: Callable[[str, Any], None],
) -> None:
    """OpenAI (the /v1 family with bearer + beta header) runs the same scenario unchanged."""
    emulator, url, log = served
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    scenario(client, emulator, clock)
    assert all(path.startswith("/v1/") for _, path, _, _ in log)
    validate_all(log, schema_validator)


@pytest.mark.anyio
async def test_azure_async_sdk_scenario(
    served: tuple[Emulator, str, Recorded], schema_validator: Callable[[str, Any], None]
) -> None:
    """AsyncAzureOpenAI: auto-pagination in both orders concatenates to exactly the truth,
    modify/delete work, and errors map to the SDK's classes."""
    emulator, url, log = served
    client = openai.AsyncAzureOpenAI(
        azure_endpoint=url, api_key=KEY, api_version="2024-05-01-preview", max_retries=0
    )
    [tid] = emulator.seed(seed=11, threads=1, messages=57)
    truth = [m["id"] for m in emulator.truth()["threads"][tid]]
    for limit in (1, 10, 100):
        asc = [m.id async for m in client.beta.threads.messages.list(tid, order="asc", limit=limit)]
        desc = [m.id async for m in client.beta.threads.messages.list(tid, limit=limit)]
        assert asc == truth
        assert desc == truth[::-1]
    message = await client.beta.threads.messages.create(tid, role="user", content="async hi")
    updated = await client.beta.threads.messages.update(
        message.id, thread_id=tid, metadata={"a": "1"}
    )
    assert updated.metadata == {"a": "1"}
    assert (await client.beta.threads.messages.delete(message.id, thread_id=tid)).deleted
    with pytest.raises(openai.NotFoundError):
        await client.beta.threads.messages.retrieve(message.id, thread_id=tid)
    with pytest.raises(openai.BadRequestError):
        await client.beta.threads.messages.list(tid, order="sideways")  # type: ignore[arg-type]
    emulator.add_fault(FaultRule(fault="429", times=1))
    with pytest.raises(openai.RateLimitError):
        await client.beta.threads.messages.retrieve(truth[0], thread_id=tid)
    await client.close()
    validate_all(log, schema_validator)


def test_vendored_schemas_match_the_public_document() -> None:
    """The committed schema subset is exactly the public document's, where that is at hand."""
    specs = _specs_dir()
    if specs is None:
        pytest.skip(f"{SPEC_NAME} not found: the vendored subset is used as committed")
    document = yaml.safe_load((specs / SPEC_NAME).read_text(encoding="utf-8"))
    expected = schema_closure(document["components"]["schemas"], VENDORED_ROOTS)
    assert orjson.loads(VENDORED.read_bytes())["schemas"] == expected
