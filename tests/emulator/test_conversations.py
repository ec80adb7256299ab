"""The Conversations API emulation: the official SDK against the openai and foundry families on a
loopback port, every answer validated against the 2026-08-21 schemas; the 20-item limit, the
assistant-role rule, paging, auth per family, and faults after the items were applied."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, MutableMapping
from typing import Any

import anyio
import httpx
import openai
import orjson
import pytest
import yaml

from worker.emulator import Emulator, FaultRule, ManualClock, create_app, serve_in_thread
from worker.emulator.routes import parse

from .conftest import KEY, _specs_dir, schema_closure
from .conversation_schema import ROOTS, SPEC_NAME, VENDORED, validate
from .test_sdk import Recorded, recording

SCHEMA_FOR_KIND = {
    "conversation.create": "ConversationResource",
    "conversation.get": "ConversationResource",
    "conversation.update": "ConversationResource",
    "conversation.delete": "DeletedConversationResource",
    "items.create": "ConversationItemList",
    "items.list": "ConversationItemList",
    "item.get": "ConversationItem",
    "item.delete": "ConversationResource",
}
FOUNDRY = "/api/projects/proj/openai/v1"


@pytest.fixture
def served(clock: ManualClock) -> Iterator[tuple[Emulator, str, Recorded]]:
    emulator = Emulator(api_key=KEY, clock=clock)
    log: Recorded = []
    with serve_in_thread(emulator, app=recording(create_app(emulator), log)) as url:
        yield emulator, url, log


def validate_log(log: Recorded) -> set[str]:
    seen: set[str] = set()
    for method, path, status, raw in log:
        body = orjson.loads(raw)
        route = parse(method, path)
        assert route is not None
        if status != 200:
            name = "ErrorResponse"
        elif route.kind == "conversation.list":
            for row in body["data"]:
                validate("ConversationResource", row)
            name = "conversation.list"
            seen.add(name)
            continue
        else:
            name = SCHEMA_FOR_KIND[route.kind]
        validate(name, body)
        seen.add(name)
    return seen


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def assistant(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def sdk_scenario(client: Any) -> None:
    # Any: the SDK's item unions make every attribute access a 28-way narrowing.
    first = [user("u0 \u00e9\U0001f9f5"), assistant("a0")]
    conv = client.conversations.create(items=first, metadata={"source_thread_id": "thread_x"})
    assert conv.metadata == {"source_thread_id": "thread_x"}
    added = client.conversations.items.create(
        conv.id,
        items=[user(f"u{i}") if i % 2 else assistant(f"a{i}") for i in range(1, 21)],
    )
    assert len(added.data) == 20
    asc = [item.id for item in client.conversations.items.list(conv.id, order="asc", limit=7)]
    desc = [item.id for item in client.conversations.items.list(conv.id, limit=3)]
    assert len(asc) == 22
    assert desc == asc[::-1]
    got = client.conversations.items.retrieve(asc[0], conversation_id=conv.id)
    assert got.type == "message"
    assert got.content[0].type == "input_text"
    second = client.conversations.items.retrieve(asc[1], conversation_id=conv.id)
    assert second.content[0].type == "output_text"
    assert client.conversations.retrieve(conv.id).id == conv.id
    updated = client.conversations.update(conv.id, metadata={"k": "v"})
    assert updated.metadata == {"k": "v"}
    parent = client.conversations.items.delete(asc[0], conversation_id=conv.id)
    assert parent.id == conv.id
    with pytest.raises(openai.BadRequestError, match="maximum length 20"):
        client.conversations.items.create(conv.id, items=[user("x")] * 21)
    with pytest.raises(openai.BadRequestError, match="Supported values are: 'output_text'"):
        client.conversations.items.create(
            conv.id,
            items=[
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "input_text", "text": "no"}],
                }
            ],
        )
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve("conv_missing")
    assert client.conversations.delete(conv.id).deleted
    empty = client.conversations.create()
    assert list(client.conversations.items.list(empty.id)) == []


def test_openai_sdk_conversations_scenario(served: tuple[Emulator, str, Recorded]) -> None:
    """client.conversations (openai 3.57) unchanged against /v1; every body matches the spec."""
    _, url, log = served
    sdk_scenario(openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0))
    assert all(path.startswith("/v1/conversations") for _, path, _, _ in log)
    seen = validate_log(log)
    assert set(SCHEMA_FOR_KIND.values()) | {"ErrorResponse"} <= seen


def test_foundry_sdk_conversations_scenario(served: tuple[Emulator, str, Recorded]) -> None:
    """The Foundry project path family, with the api-key header instead of a bearer token."""
    _, url, log = served
    client = openai.OpenAI(
        base_url=url + FOUNDRY, api_key="unused", default_headers={"api-key": KEY}, max_retries=0
    )
    # The SDK always sends a bearer header; Foundry takes either, so send the right key both ways.
    client = client.with_options(api_key=KEY)
    sdk_scenario(client)
    assert all(path.startswith(FOUNDRY) for _, path, _, _ in log)
    validate_log(log)


@pytest.fixture
async def http(emulator: Emulator) -> Any:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(emulator)),
        base_url="http://emu",
        headers={"authorization": f"Bearer {KEY}"},
    ) as client:
        yield client


@pytest.mark.anyio
async def test_item_limits_and_role_rules(http: httpx.AsyncClient, emulator: Emulator) -> None:
    created = await http.post(
        "/v1/conversations", json={"items": [user(str(i)) for i in range(20)]}
    )
    assert created.status_code == 200
    cid = created.json()["id"]
    too_many = await http.post("/v1/conversations", json={"items": [user("x")] * 21})
    assert too_many.status_code == 400
    assert too_many.json()["error"]["code"] == "array_above_max_length"
    assert len(emulator.conversations.by_id) == 1  # a refused create makes nothing
    wrong = await http.post(
        f"/v1/conversations/{cid}/items",
        json={
            "items": [
                user("ok"),
                {"role": "assistant", "content": [{"type": "input_text", "text": "x"}]},
            ]
        },
    )
    assert wrong.status_code == 400
    error = wrong.json()["error"]
    assert error["param"] == "items[1].content[0]"
    assert error["message"] == (
        "Invalid value: 'input_text'. Supported values are: 'output_text' and 'refusal'."
    )
    assert len(emulator.conversations.get(cid).items) == 20  # nothing of a refused batch lands
    user_output = await http.post(
        f"/v1/conversations/{cid}/items",
        json={"items": [{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]},
    )
    assert user_output.status_code == 400
    for bad in (
        {"role": "user", "content": [{"type": "input_image", "detail": "auto"}]},
        {"role": "user", "content": [{"type": "input_file"}]},
        {"role": "critic", "content": "x"},
        {"role": "user", "content": 5},
        {"type": "function_call_output", "call_id": "c", "output": "x"},
    ):
        answer = await http.post(f"/v1/conversations/{cid}/items", json={"items": [bad]})
        assert answer.status_code == 400, bad
        validate("ErrorResponse", answer.json())
    missing = await http.post(f"/v1/conversations/{cid}/items", json={})
    assert missing.status_code == 400
    meta = await http.post("/v1/conversations", json={"metadata": {str(i): "v" for i in range(17)}})
    assert meta.status_code == 400


@pytest.mark.anyio
async def test_every_content_part_round_trips_in_the_read_shape(http: httpx.AsyncClient) -> None:
    items = [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "file_id": "file-1", "detail": "high"},
                {"type": "input_image", "image_url": "https://example.com/a.png"},
                {"type": "input_file", "file_id": "file-2"},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {
                    "type": "output_text",
                    "text": "see sandbox:/a.csv",
                    "annotations": [{"type": "file_path", "file_id": "file-3", "index": 4}],
                },
                {"type": "refusal", "refusal": "no"},
            ],
        },
        {"role": "assistant", "content": "plain"},
        {"role": "user", "content": "plain"},
    ]
    answer = await http.post("/v1/conversations", json={"items": items})
    cid = answer.json()["id"]
    listed = (await http.get(f"/v1/conversations/{cid}/items", params={"order": "asc"})).json()
    validate("ConversationItemList", listed)
    kinds = [[p["type"] for p in item["content"]] for item in listed["data"]]
    assert kinds == [
        ["input_text", "input_image", "input_image", "input_file"],
        ["output_text", "refusal"],
        ["output_text"],
        ["input_text"],
    ]
    assert listed["data"][1]["content"][0]["annotations"][0]["file_id"] == "file-3"


@pytest.mark.anyio
async def test_paging_after_and_foundry_before(http: httpx.AsyncClient) -> None:
    cid = (await http.post(f"{FOUNDRY}/conversations", json={})).json()["id"]
    for start in range(0, 45, 15):
        items = [user(str(i)) for i in range(start, start + 15)]
        assert (
            await http.post(f"{FOUNDRY}/conversations/{cid}/items", json={"items": items})
        ).status_code == 200
    seen: list[str] = []
    after: str | None = None
    while True:
        params = {"limit": "10", **({"after": after} if after else {})}
        page = (await http.get(f"{FOUNDRY}/conversations/{cid}/items", params=params)).json()
        validate("ConversationItemList", page)
        seen += [i["content"][0]["text"] for i in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == [str(i) for i in reversed(range(45))]
    newest = (await http.get(f"{FOUNDRY}/conversations/{cid}/items", params={"limit": "2"})).json()
    before = await http.get(
        f"{FOUNDRY}/conversations/{cid}/items", params={"before": newest["last_id"], "limit": "5"}
    )
    assert [i["content"][0]["text"] for i in before.json()["data"]] == ["44"]
    listed = (await http.get(f"{FOUNDRY}/conversations")).json()
    assert [c["id"] for c in listed["data"]] == [cid]
    refused = await http.get(f"/v1/conversations/{cid}/items", params={"before": "x"})
    assert refused.status_code == 400
    assert (await http.get("/v1/conversations")).status_code == 404  # OpenAI cannot list


@pytest.mark.anyio
async def test_auth_per_family(http: httpx.AsyncClient) -> None:
    no_bearer = {"authorization": ""}
    key_only = {"authorization": "", "api-key": KEY}
    assert (await http.post("/v1/conversations", json={}, headers=key_only)).status_code == 401
    assert (
        await http.post(f"{FOUNDRY}/conversations", json={}, headers=key_only)
    ).status_code == 200
    assert (
        await http.post("/openai/v1/conversations", json={}, headers=key_only)
    ).status_code == 200
    assert (await http.post("/v1/conversations", json={}, headers=no_bearer)).status_code == 401
    wrong = {"authorization": "Bearer nope"}
    assert (await http.post(f"{FOUNDRY}/conversations", json={}, headers=wrong)).status_code == 401


@pytest.mark.anyio
@pytest.mark.parametrize("fault", ["500_after_apply", "drop"])
async def test_faults_after_apply_leave_the_items_applied(
    http: httpx.AsyncClient, emulator: Emulator, fault: str
) -> None:
    cid = (await http.post("/v1/conversations", json={})).json()["id"]
    emulator.add_fault(FaultRule(fault=fault, route="items.create", thread_id=cid))  # type: ignore[arg-type]
    if fault == "drop":
        with pytest.raises(Exception, match="dropped"):
            await http.post(f"/v1/conversations/{cid}/items", json={"items": [user("x")]})
    else:
        answer = await http.post(f"/v1/conversations/{cid}/items", json={"items": [user("x")]})
        assert answer.status_code == 500
    assert [i["content"][0]["text"] for i in emulator.conversations.get(cid).items] == ["x"]


def test_state_file_keeps_conversations(tmp_path: Any, clock: ManualClock) -> None:
    path = tmp_path / "state.json"
    first = Emulator(api_key=KEY, clock=clock, state_path=path)
    transport = httpx.ASGITransport(app=create_app(first))

    async def go() -> str:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://e", headers={"authorization": f"Bearer {KEY}"}
        ) as c:
            return str(
                (await c.post("/v1/conversations", json={"items": [user("k")]})).json()["id"]
            )

    cid = anyio.run(go)
    second = Emulator(api_key=KEY, clock=clock, state_path=path)
    assert second.conversations.get(cid).items == first.conversations.get(cid).items


def test_vendored_conversation_schemas_match_the_public_document() -> None:
    specs = _specs_dir()
    if specs is None or not (specs / SPEC_NAME).is_file():
        pytest.skip(f"{SPEC_NAME} not found: the vendored subset is used as committed")
    document = yaml.load((specs / SPEC_NAME).read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
    expected = schema_closure(document["components"]["schemas"], ROOTS)
    assert orjson.loads(VENDORED.read_bytes())["schemas"] == expected


@pytest.mark.anyio
@pytest.mark.parametrize(
    "path",
    ["/v1/conversations", "/api/projects/proj/openai/v1/conversations"],
    ids=["openai", "foundry"],
)
@pytest.mark.parametrize("arrived", [b"", b'{"metadata": {"source_thread_id": "thr'])
async def test_a_create_whose_client_hung_up_mid_body_is_never_applied(
    path: str, arrived: bytes
) -> None:
    """A client killed between sending a POST's headers and the end of its body: the server
    sees the disconnect. It once read that as an empty body and created a conversation with no
    metadata and no items (the migration's random-kill test then found a conversation without
    ``source_thread_id``); a server never acts on a request it did not receive whole."""
    emulator = Emulator(api_key=KEY, seed=1)
    headers = [
        (b"authorization", f"Bearer {KEY}".encode()),
        (b"api-key", KEY.encode()),
        (b"content-type", b"application/json"),
        (b"content-length", b"300"),
    ]
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "query_string": b"",
        "headers": headers,
    }
    messages: list[dict[str, Any]] = [{"type": "http.disconnect"}]  # as uvicorn tells it
    if arrived:
        messages.insert(0, {"type": "http.request", "body": arrived, "more_body": True})
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await create_app(emulator)(scope, receive, send)
    assert emulator.conversations.by_id == {}
    assert sent == []  # nobody is left to answer
    route = parse("POST", path)
    assert route is not None
    assert emulator.request_counts[(route.template, 499)] == 1


def test_a_client_killed_after_the_headers_of_a_create_leaves_no_conversation() -> None:
    """The same over a real socket, at the exact moment a SIGKILL of ``migrate`` can land: the
    create's headers sent, its body not, the connection closed by the dying process."""
    emulator = Emulator(api_key=KEY, seed=1)
    handled = threading.Event()
    inner = create_app(emulator)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await inner(scope, receive, send)
        if scope["type"] == "http":
            handled.set()

    with serve_in_thread(emulator, app=app) as url:
        parts = httpx.URL(url)
        with socket.create_connection((parts.host, parts.port or 80)) as conn:
            conn.sendall(
                b"POST /v1/conversations HTTP/1.1\r\nHost: emulator\r\n"
                + f"Authorization: Bearer {KEY}\r\n".encode()
                + b"Content-Type: application/json\r\nContent-Length: 120\r\n\r\n"
            )
        assert handled.wait(30)  # the app has seen the hang-up and returned
    assert emulator.conversations.by_id == {}
    assert emulator.request_counts[("POST /v1/conversations", 499)] == 1
