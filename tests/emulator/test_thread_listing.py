"""GET /threads as Foundry classic serves it (SUCCESSOR.md section 4); the other families have
no such operation (API.md section 2.2)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from worker.emulator import Emulator, ManualClock

from .conftest import AZURE_Q, KEY

FOUNDRY = "/api/projects/demo/threads"
FOUNDRY_Q = {"api-version": "2025-05-01"}
BEARER = {"Authorization": f"Bearer {KEY}"}


def _make(emulator: Emulator, clock: ManualClock, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        ids.append(emulator.create_thread(body={"metadata": {"k": "v"}})["id"])
        clock.advance(1)
    return ids


async def _list(client: httpx.AsyncClient, **params: str) -> Any:
    r = await client.get(FOUNDRY, params={**FOUNDRY_Q, **params}, headers=BEARER)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.anyio
async def test_defaults_are_newest_first_twenty_and_foundrys_body(
    client: httpx.AsyncClient, emulator: Emulator, clock: ManualClock
) -> None:
    """limit 20 and order desc by default; the body is {data, last_id, has_more}: no object,
    no first_id; each thread is {id, object: "thread", created_at, tool_resources, metadata}."""
    ids = _make(emulator, clock, 25)
    body = await _list(client)
    assert set(body) == {"data", "last_id", "has_more"}
    assert [t["id"] for t in body["data"]] == ids[::-1][:20]
    assert body["last_id"] == ids[5]
    assert body["has_more"] is True
    thread = body["data"][0]
    assert thread["object"] == "thread"
    assert set(thread) >= {"id", "object", "created_at", "tool_resources", "metadata"}
    assert thread["metadata"] == {"k": "v"}


@pytest.mark.anyio
async def test_after_and_before_page_in_the_requested_order(
    client: httpx.AsyncClient, emulator: Emulator, clock: ManualClock
) -> None:
    ids = _make(emulator, clock, 7)
    first = await _list(client, order="asc", limit="3")
    second = await _list(client, order="asc", limit="3", after=first["last_id"])
    third = await _list(client, order="asc", limit="3", after=second["last_id"])
    walked = [t["id"] for page in (first, second, third) for t in page["data"]]
    assert walked == ids
    assert third["has_more"] is False
    back = await _list(client, order="asc", limit="2", before=ids[4])
    assert [t["id"] for t in back["data"]] == ids[2:4]
    empty = await _list(client, order="asc", after=ids[-1])
    assert empty == {"data": [], "last_id": None, "has_more": False}


@pytest.mark.anyio
async def test_deleted_threads_are_not_listed(
    client: httpx.AsyncClient, emulator: Emulator, clock: ManualClock
) -> None:
    ids = _make(emulator, clock, 3)
    emulator.delete_thread(ids[1])
    body = await _list(client, order="asc")
    assert [t["id"] for t in body["data"]] == [ids[0], ids[2]]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("params", "param"), [({"limit": "0"}, "limit"), ({"order": "x"}, "order")]
)
async def test_bad_paging_parameters_are_400(
    client: httpx.AsyncClient, params: dict[str, str], param: str
) -> None:
    r = await client.get(FOUNDRY, params={**FOUNDRY_Q, **params}, headers=BEARER)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


@pytest.mark.anyio
async def test_azure_and_openai_cannot_list_threads(client: httpx.AsyncClient) -> None:
    """The Azure 2024-05/08 and OpenAI v2 specs define /threads as POST only: 404."""
    assert (await client.get("/openai/threads", params=AZURE_Q)).status_code == 404
    v1 = {**BEARER, "OpenAI-Beta": "assistants=v2"}
    assert (await client.get("/v1/threads", headers=v1)).status_code == 404
