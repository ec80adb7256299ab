"""The wire contract per family: auth, versions, validation, list shapes, behaviours."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from worker.emulator import Behaviour, Emulator

from .conftest import AZURE_Q, KEY

pytestmark = pytest.mark.anyio
V1 = {"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "assistants=v2"}
FOUNDRY = "/api/projects/demo"
FOUNDRY_Q = {"api-version": "2025-05-01"}


def error(r: httpx.Response) -> dict[str, Any]:
    body = r.json()["error"]
    assert set(body) == {"code", "message", "param", "type"}
    return dict(body)


@pytest.mark.parametrize(
    ("path", "params", "headers", "status", "code"),
    [
        ("/openai/threads/t", AZURE_Q, {"api-key": ""}, 401, "401"),
        ("/openai/threads/t", AZURE_Q, {"api-key": "wrong"}, 401, "401"),
        ("/openai/threads/t", {}, {}, 400, "MissingApiVersionParameter"),
        ("/openai/threads/t", {"api-version": "2023-01-01"}, {}, 404, "404"),
        ("/v1/threads/t", {}, {"Authorization": f"Bearer {KEY}"}, 400, "invalid_beta"),
        ("/v1/threads/t", {}, {"api-key": KEY, "OpenAI-Beta": "assistants=v2"}, 401, None),
        ("/v1/threads/t", {}, {**V1, "Authorization": "Bearer nope"}, 401, "invalid_api_key"),
        (f"{FOUNDRY}/threads/t", FOUNDRY_Q, {"api-key": KEY}, 401, None),
        (f"{FOUNDRY}/threads/t", {}, {"Authorization": f"Bearer {KEY}"}, 400, None),
        (
            f"{FOUNDRY}/threads/t",
            {"api-version": "2024-08-01-preview"},
            {"Authorization": f"Bearer {KEY}"},
            400,
            "UnsupportedApiVersion",
        ),
    ],
)
async def test_auth_and_version_errors_per_family(
    client: httpx.AsyncClient,
    path: str,
    params: dict[str, str],
    headers: dict[str, str],
    status: int,
    code: str | None,
) -> None:
    """Each family's credential, api-version and beta-header rules, in the vendor error shape."""
    r = await client.get(path, params=params, headers=headers)
    assert r.status_code == status
    body = error(r)
    if code is not None:
        assert body["code"] == code


async def test_each_family_reaches_the_same_state(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    """Azure (api-key or bearer), /v1 and Foundry paths all serve one thread; request ids set."""
    [tid] = emulator.seed(seed=3, threads=1, messages=4)
    azure = await client.get(f"/openai/threads/{tid}/messages", params=AZURE_Q)
    bearer = await client.get(
        f"/openai/threads/{tid}/messages",
        params=AZURE_Q,
        headers={"api-key": "", "Authorization": f"Bearer {KEY}"},
    )
    v1 = await client.get(f"/v1/threads/{tid}/messages", headers=V1)
    foundry = await client.get(
        f"{FOUNDRY}/threads/{tid}/messages",
        params=FOUNDRY_Q,
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert azure.json() == bearer.json() == v1.json()
    assert "apim-request-id" in azure.headers
    assert "x-request-id" in v1.headers
    assert "apim-request-id" not in v1.headers
    assert set(foundry.json()) == {"data", "last_id", "has_more"}
    assert foundry.json()["data"] == azure.json()["data"]


async def test_foundry_lists_threads_and_others_cannot(
    client: httpx.AsyncClient, emulator: Emulator, clock: Any
) -> None:
    """GET .../threads pages threads on Foundry only; Azure answers 404 there."""
    ids = []
    for _ in range(5):
        ids.append(emulator.create_thread()["id"])
        clock.advance(1)
    r = await client.get(
        f"{FOUNDRY}/threads",
        params={**FOUNDRY_Q, "limit": "2", "order": "asc"},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert [t["id"] for t in r.json()["data"]] == ids[:2]
    assert r.json()["has_more"] is True
    assert (await client.get("/openai/threads", params=AZURE_Q)).status_code == 404


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"order": "up"}, "order"),
    ],
)
async def test_list_query_validation(
    client: httpx.AsyncClient, emulator: Emulator, params: dict[str, str], param: str
) -> None:
    """limit outside 1..100 (or not an integer) and unknown orders answer 400 naming the param."""
    [tid] = emulator.seed(threads=1, messages=1)
    r = await client.get(f"/openai/threads/{tid}/messages", params={**AZURE_Q, **params})
    assert r.status_code == 400
    assert error(r)["param"] == param


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"role": "user", "content": "x", "extra": 1}, "unknown_parameter"),
        ({"role": "system", "content": "x"}, "invalid_value"),
        ({"role": "user"}, "missing_required_parameter"),
        ({"role": "user", "content": ""}, "string_below_min_length"),
        ({"role": "user", "content": "x" * 256_001}, "string_above_max_length"),
        ({"role": "user", "content": [{"type": "text", "text": "x"}]}, "invalid_type"),
        ({"role": "user", "content": "x", "metadata": {"k": 1}}, "invalid_type"),
        ({"role": "user", "content": "x", "metadata": {"k" * 65: "v"}}, "string_above_max_length"),
        (
            {"role": "user", "content": "x", "metadata": {f"k{i}": "v" for i in range(17)}},
            "object_above_max_properties",
        ),
    ],
)
async def test_azure_create_message_validation(
    client: httpx.AsyncClient, emulator: Emulator, body: dict[str, Any], code: str
) -> None:
    """Azure create rules: string content 1..256000, known fields, roles, metadata limits."""
    tid = emulator.create_thread()["id"]
    r = await client.post(f"/openai/threads/{tid}/messages", params=AZURE_Q, json=body)
    assert r.status_code == 400
    assert error(r)["code"] == code
    assert emulator.truth()["threads"][tid] == []


async def test_openai_accepts_content_parts(client: httpx.AsyncClient, emulator: Emulator) -> None:
    """/v1 create takes text, image_file and image_url parts and stores them in wire form."""
    tid = emulator.create_thread()["id"]
    parts = [
        {"type": "text", "text": "look"},
        {"type": "image_file", "image_file": {"file_id": "file-1", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    ]
    r = await client.post(
        f"/v1/threads/{tid}/messages", headers=V1, json={"role": "user", "content": parts}
    )
    assert r.status_code == 200
    content = r.json()["content"]
    assert content[0] == {"type": "text", "text": {"value": "look", "annotations": []}}
    assert [p["type"] for p in content] == ["text", "image_file", "image_url"]
    bad = await client.post(
        f"/v1/threads/{tid}/messages",
        headers=V1,
        json={"role": "user", "content": [{"type": "audio"}]},
    )
    assert bad.status_code == 400


async def test_unknown_ids_and_bad_json(client: httpx.AsyncClient, emulator: Emulator) -> None:
    """Unknown threads/messages answer 404; unparsable JSON answers 400."""
    tid = emulator.create_thread()["id"]
    assert (await client.get("/openai/threads/thread_x", params=AZURE_Q)).status_code == 404
    r = await client.get(f"/openai/threads/{tid}/messages/msg_x", params=AZURE_Q)
    assert r.status_code == 404
    r = await client.post(f"/openai/threads/{tid}/messages", params=AZURE_Q, content=b"{nope")
    assert r.status_code == 400


async def test_empty_page_has_null_ids(client: httpx.AsyncClient, emulator: Emulator) -> None:
    """An empty list answers first_id/last_id null (the spec says string; see test_sdk)."""
    tid = emulator.create_thread()["id"]
    r = await client.get(f"/openai/threads/{tid}/messages", params=AZURE_Q)
    assert r.json() == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }


@pytest.mark.parametrize(
    ("mode", "sent", "expected"),
    [
        ("merge", {"b": "2"}, {"a": "1", "b": "2"}),
        ("merge", {"a": ""}, {"a": ""}),
        ("merge", {}, {"a": "1"}),
        ("replace", {"b": "2"}, {"b": "2"}),
        ("replace", {}, {}),
    ],
)
async def test_modify_metadata_behaviours(
    client: httpx.AsyncClient,
    emulator: Emulator,
    mode: str,
    sent: dict[str, str],
    expected: dict[str, str],
) -> None:
    """Modify merges sent keys or replaces the map, per the behaviour switch; stats log it."""
    emulator.set_behaviour(metadata=mode)
    tid = emulator.create_thread()["id"]
    msg = emulator.create_message(tid, {"role": "user", "content": "x", "metadata": {"a": "1"}})
    url = f"/openai/threads/{tid}/messages/{msg['id']}"
    r = await client.post(url, params=AZURE_Q, json={"metadata": sent})
    assert r.json()["metadata"] == expected
    assert (await client.get(url, params=AZURE_Q)).json()["metadata"] == expected
    [call] = emulator.stats()["modify_calls"]
    assert call == {
        "thread_id": tid,
        "message_id": msg["id"],
        "body": {"metadata": sent},
        "applied": True,
        "status": 200,
    }


async def test_modify_rejects_null_values_and_limits_after_merge(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    """A null value is 400 invalid_type; 16 pairs are checked after merging; nothing changes."""
    tid = emulator.create_thread()["id"]
    meta = {f"k{i}": "v" for i in range(16)}
    msg = emulator.create_message(tid, {"role": "user", "content": "x", "metadata": meta})
    url = f"/openai/threads/{tid}/messages/{msg['id']}"
    r = await client.post(url, params=AZURE_Q, json={"metadata": {"k0": None}})
    assert (r.status_code, error(r)["code"], error(r)["param"]) == (
        400,
        "invalid_type",
        "metadata.k0",
    )
    r = await client.post(url, params=AZURE_Q, json={"metadata": {"k99": "v"}})
    assert error(r)["code"] == "object_above_max_properties"
    r = await client.post(url, params=AZURE_Q, json={"metadata": {}, "role": "user"})
    assert error(r)["code"] == "unknown_parameter"
    assert emulator.message(tid, msg["id"]).data["metadata"] == meta
    assert [c["applied"] for c in emulator.stats()["modify_calls"]] == [False, False, False]


async def test_stale_json_cache_is_invalidated(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    """After a modify, both retrieve and list serve the new metadata (cached bytes dropped)."""
    tid = emulator.create_thread()["id"]
    msg = emulator.create_message(tid, {"role": "user", "content": "x"})
    await client.get(f"/openai/threads/{tid}/messages", params=AZURE_Q)
    emulator.edit_metadata(tid, msg["id"], {"seen": "yes"})
    r = await client.get(f"/openai/threads/{tid}/messages", params=AZURE_Q)
    assert r.json()["data"][0]["metadata"] == {"seen": "yes"}


async def test_ties_stable_keeps_creation_order_in_desc(emulator: Emulator, clock: Any) -> None:
    """'stable': within one second desc keeps creation order; 'reverse' flips it."""
    tid = emulator.create_thread()["id"]
    a = emulator.create_message(tid, {"role": "user", "content": "a"})["id"]
    b = emulator.create_message(tid, {"role": "user", "content": "b"})["id"]
    clock.advance(1)
    c = emulator.create_message(tid, {"role": "user", "content": "c"})["id"]
    desc = [r.id for r in emulator.list_messages(tid, order="desc").items]
    assert desc == [c, b, a]
    emulator.set_behaviour(ties="stable")
    assert [r.id for r in emulator.list_messages(tid, order="desc").items] == [c, a, b]


def test_behaviour_rejects_unknown_values() -> None:
    """Behaviour.updated refuses unknown switches and values."""
    with pytest.raises(ValueError):
        Behaviour().updated({"ties": "random"})
    with pytest.raises(ValueError):
        Behaviour().updated({"colour": "red"})


async def test_run_id_filter(client: httpx.AsyncClient, emulator: Emulator) -> None:
    """run_id narrows the listing to that run's messages."""
    [tid] = emulator.seed(seed=4, threads=1, messages=30)
    run = next(m["run_id"] for m in emulator.truth()["threads"][tid] if m["run_id"])
    r = await client.get(f"/openai/threads/{tid}/messages", params={**AZURE_Q, "run_id": run})
    assert r.json()["data"]
    assert {m["run_id"] for m in r.json()["data"]} == {run}
