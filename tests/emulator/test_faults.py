"""Faults on demand: each kind, scripted and probabilistic matching, latency, token bucket."""

from __future__ import annotations

import anyio
import anyio.to_thread
import httpx
import orjson
import pytest

from worker.emulator import (
    DroppedConnection,
    Emulator,
    FaultRule,
    Faults,
    RateLimit,
    create_app,
    serve_in_thread,
)

from .conftest import AZURE_Q, KEY

pytestmark = pytest.mark.anyio


async def _thread(client: httpx.AsyncClient) -> str:
    r = await client.post("/openai/threads", params=AZURE_Q, json={})
    return str(r.json()["id"])


@pytest.mark.parametrize(("fault", "status"), [("429", 429), ("500", 500), ("503", 503)])
async def test_error_faults_answer_before_applying(
    client: httpx.AsyncClient, emulator: Emulator, fault: str, status: int
) -> None:
    """429/500/503 answer the error body and do not apply the write."""
    tid = await _thread(client)
    emulator.add_fault(FaultRule(fault=fault, route="create", retry_after=1.5))  # type: ignore[arg-type]
    r = await client.post(
        f"/openai/threads/{tid}/messages", params=AZURE_Q, json={"role": "user", "content": "x"}
    )
    assert r.status_code == status
    assert set(r.json()["error"]) == {"code", "message", "param", "type"}
    assert emulator.truth()["threads"][tid] == []
    if fault == "429":
        assert r.headers["retry-after"] == "2"
        assert r.headers["retry-after-ms"] == "1500"


async def test_500_after_apply_applies_the_write(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    """A '500 after apply' create answers 500 but the message exists afterwards."""
    tid = await _thread(client)
    emulator.add_fault(FaultRule(fault="500_after_apply", route="create"))
    r = await client.post(
        f"/openai/threads/{tid}/messages", params=AZURE_Q, json={"role": "user", "content": "x"}
    )
    assert r.status_code == 500
    assert len(emulator.truth()["threads"][tid]) == 1


async def test_truncated_json_is_a_cut_200(client: httpx.AsyncClient, emulator: Emulator) -> None:
    """Truncate answers 200 with a body that is a strict prefix of valid JSON."""
    [tid] = emulator.seed(seed=1, threads=1, messages=5)
    emulator.add_fault(FaultRule(fault="truncate", route="list"))
    r = await client.get(f"/openai/threads/{tid}/messages", params=AZURE_Q)
    assert r.status_code == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(r.content)
    whole = await client.get(f"/openai/threads/{tid}/messages", params=AZURE_Q)
    assert whole.content.startswith(r.content)


async def test_drop_raises_after_a_partial_body_in_process(emulator: Emulator) -> None:
    """Over ASGI the dropped connection surfaces as the app raising after a partial body."""
    [tid] = emulator.seed(seed=1, threads=1, messages=5)
    emulator.add_fault(FaultRule(fault="drop"))
    transport = httpx.ASGITransport(app=create_app(emulator))
    async with httpx.AsyncClient(transport=transport, base_url="http://e") as http:
        with pytest.raises(DroppedConnection):
            await http.get(
                f"/openai/threads/{tid}/messages", params=AZURE_Q, headers={"api-key": KEY}
            )


def test_drop_aborts_a_real_connection(emulator: Emulator) -> None:
    """Over a socket the client sees the connection die mid-body; the next call is fine."""
    [tid] = emulator.seed(seed=1, threads=1, messages=30)
    emulator.add_fault(FaultRule(fault="drop", route="list", thread_id=tid))
    with (
        serve_in_thread(emulator, log_level="critical") as url,
        httpx.Client(base_url=url, headers={"api-key": KEY}) as http,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            http.get(f"/openai/threads/{tid}/messages", params=AZURE_Q)
        assert http.get(f"/openai/threads/{tid}/messages", params=AZURE_Q).status_code == 200


async def test_scripted_rule_hits_the_next_n_matching_calls_only(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    """'The next 3 list calls on thread X answer 503': other threads and routes pass."""
    a, b = emulator.seed(seed=2, threads=2, messages=3)
    emulator.add_fault(FaultRule(fault="503", times=3, method="get", route="list", thread_id=a))
    codes = []
    for _ in range(4):
        assert (await client.get(f"/openai/threads/{b}/messages", params=AZURE_Q)).is_success
        r = await client.get(f"/openai/threads/{a}", params=AZURE_Q)
        assert r.is_success
        codes.append(
            (await client.get(f"/openai/threads/{a}/messages", params=AZURE_Q)).status_code
        )
    assert codes == [503, 503, 503, 200]
    assert emulator.faults.rules == []


async def test_a_gate_holds_only_the_named_clients_request_until_released(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    """A ``gate`` matching ``replica/a`` holds a's list request (and says so) while another
    client's passes; released, a's request is answered as usual."""
    (tid,) = emulator.seed(seed=2, threads=1, messages=3)
    emulator.add_fault(FaultRule(fault="gate", route="list", agent="replica/a"))
    url = f"/openai/threads/{tid}/messages"
    answers: dict[str, int] = {}

    async def get(agent: str) -> None:
        r = await client.get(url, params=AZURE_Q, headers={"User-Agent": f"threadsync/1 {agent}"})
        answers[agent] = r.status_code

    async with anyio.create_task_group() as tg:
        tg.start_soon(get, "replica/a")
        held = await anyio.to_thread.run_sync(emulator.gate.wait_held, 10.0)
        assert (held.route, held.thread_id) == ("list", tid)
        assert "replica/a" in held.agent
        await get("replica/b")  # not held
        assert answers == {"replica/b": 200}
        emulator.gate.release()
    assert answers == {"replica/b": 200, "replica/a": 200}
    assert emulator.faults.rules == []
    with pytest.raises(TimeoutError):
        emulator.gate.wait_held(0.01)  # nothing else was held


async def test_probabilistic_faults_are_seeded(emulator: Emulator) -> None:
    """A 30 % rule hits some but not all calls, and the same seed hits the same calls."""

    async def pattern(seed: int) -> list[int]:
        emu = Emulator(api_key=KEY, seed=seed)
        [tid] = emu.seed(threads=1, messages=2)
        emu.add_fault(FaultRule(fault="500", times=None, probability=0.3))
        transport = httpx.ASGITransport(app=create_app(emu))
        async with httpx.AsyncClient(transport=transport, base_url="http://e") as http:
            return [
                (
                    await http.get(
                        f"/openai/threads/{tid}", params=AZURE_Q, headers={"api-key": KEY}
                    )
                ).status_code
                for _ in range(60)
            ]

    first = await pattern(5)
    assert 5 <= first.count(500) <= 35
    assert first == await pattern(5)


async def test_latency_sleeps_fixed_plus_jitter(
    client: httpx.AsyncClient, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Global and per-rule latency go through anyio.sleep with fixed + bounded jitter."""
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(anyio, "sleep", fake_sleep)
    emulator.set_faults(Faults(latency_ms=100, jitter_ms=50))
    emulator.add_fault(FaultRule(fault="latency", latency_ms=1000))
    tid = await _thread(client)
    await client.get(f"/openai/threads/{tid}", params=AZURE_Q)
    assert 1.1 <= slept[0] <= 1.15
    assert 0.1 <= slept[1] <= 0.15


async def test_token_bucket_answers_honest_retry_after() -> None:
    """Burst 2 at 4 rps: the third call is 429 with retry-after-ms 250; after 250 ms it passes,
    and another key has its own bucket."""
    now = [100.0]
    emulator = Emulator(api_key=KEY, monotonic=lambda: now[0])
    [tid] = emulator.seed(threads=1, messages=1)
    emulator.set_faults(Faults(rate_limit=RateLimit(rps=4, burst=2)))
    transport = httpx.ASGITransport(app=create_app(emulator))
    async with httpx.AsyncClient(transport=transport, base_url="http://e") as http:
        url = f"/openai/threads/{tid}"

        async def call(key: str = KEY) -> httpx.Response:
            return await http.get(url, params=AZURE_Q, headers={"api-key": key})

        assert (await call()).status_code == 200
        assert (await call()).status_code == 200
        limited = await call()
        assert limited.status_code == 429
        assert limited.headers["retry-after-ms"] == "250"
        assert limited.headers["retry-after"] == "1"
        now[0] += 0.25
        assert (await call()).status_code == 200
        assert (await call()).status_code == 429


def test_fault_rules_reject_nonsense() -> None:
    """Unknown fault kinds, routes and fields are refused up front."""
    with pytest.raises(ValueError):
        FaultRule(fault="teapot")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        FaultRule(fault="500", route="lists")
    with pytest.raises(ValueError):
        FaultRule.from_dict({"fault": "500", "nope": 1})


async def _seeded_thread(client: httpx.AsyncClient, n: int) -> str:
    tid = await _thread(client)
    for i in range(n):
        r = await client.post(
            f"/openai/threads/{tid}/messages",
            params=AZURE_Q,
            json={"role": "user", "content": f"m{i}"},
        )
        assert r.status_code == 200
    return tid


async def test_hostile_answers_through_the_control_plane(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    """malform (fields set and dropped), duplicate (a changed copy after the original) and
    relist (an inclusive cursor), added with PATCH /_emulator/faults; the state is untouched."""
    tid = await _seeded_thread(client, 3)
    listed = f"/openai/threads/{tid}/messages"
    rules = [
        {"fault": "malform", "route": "list", "index": -1, "fields": {"content": "x"},
         "drop": ["created_at"]},
        {"fault": "duplicate", "route": "list", "index": 0, "fields": {"metadata": {"c": "2"}}},
        {"fault": "relist", "route": "list"},
    ]  # fmt: skip
    for rule in rules:
        assert (await client.patch("/_emulator/faults", json=rule)).status_code == 200
    truth = emulator.truth()["threads"][tid]
    asc = {**AZURE_Q, "order": "asc"}

    malformed = (await client.get(listed, params=asc)).json()["data"]
    assert malformed[:2] == truth[:2]
    assert malformed[2]["content"] == "x"
    assert "created_at" not in malformed[2]

    doubled = (await client.get(listed, params=asc)).json()["data"]
    assert [m["id"] for m in doubled] == [truth[0]["id"], *(m["id"] for m in truth)]
    assert doubled[1]["metadata"] == {"c": "2"}
    assert doubled[0] == truth[0]

    after = (await client.get(listed, params={**asc, "after": truth[0]["id"]})).json()
    assert [m["id"] for m in after["data"]] == [m["id"] for m in truth]
    assert after["first_id"] == truth[0]["id"]
    assert emulator.truth()["threads"][tid] == truth  # only answers were changed
    assert (await client.get(listed, params=asc)).json()["data"] == truth  # rules used up


async def test_a_malformed_single_message_answer(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    tid = await _seeded_thread(client, 1)
    mid = emulator.truth()["threads"][tid][0]["id"]
    emulator.add_fault(FaultRule("malform", route="get", item="not a message"))
    r = await client.get(f"/openai/threads/{tid}/messages/{mid}", params=AZURE_Q)
    assert r.json() == "not a message"


async def test_a_hostile_rule_is_checked_when_added(client: httpx.AsyncClient) -> None:
    bad = {"fault": "malform", "fields": ["content"]}
    r = await client.patch("/_emulator/faults", json=bad)
    assert r.status_code == 400
    assert "fields must be an object" in r.json()["error"]["message"]


async def test_trickle_sends_the_whole_answer_a_byte_at_a_time(
    client: httpx.AsyncClient, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Headers at once, then one byte per interval: the same bytes a normal answer has."""
    [tid] = emulator.seed(seed=1, threads=1, messages=3)
    whole = await client.get(f"/openai/threads/{tid}/messages", params=AZURE_Q)
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(anyio, "sleep", fake_sleep)
    emulator.add_fault(FaultRule(fault="trickle", route="list", byte_interval_ms=250))
    async with client.stream("GET", f"/openai/threads/{tid}/messages", params=AZURE_Q) as r:
        assert r.headers["content-length"] == str(len(whole.content))
        chunks = [chunk async for chunk in r.aiter_raw()]
    assert b"".join(chunks) == whole.content
    assert slept == [0.25] * len(whole.content)


def test_trickle_over_a_socket_then_a_normal_answer(emulator: Emulator) -> None:
    """Over a socket: the client reads a byte and hangs up; the next request is answered
    normally (a scripted trickle retires like any rule)."""
    [tid] = emulator.seed(seed=1, threads=1, messages=30)
    emulator.add_fault(FaultRule(fault="trickle", route="list", byte_interval_ms=5))
    with (
        serve_in_thread(emulator, log_level="critical") as url,
        httpx.Client(base_url=url, headers={"api-key": KEY}) as http,
    ):
        with http.stream("GET", f"/openai/threads/{tid}/messages", params=AZURE_Q) as r:
            assert r.status_code == 200
            first = next(r.iter_raw(1))
        assert first == b"{"
        assert http.get(f"/openai/threads/{tid}/messages", params=AZURE_Q).status_code == 200


def test_trickle_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="byte_interval_ms"):
        FaultRule(fault="trickle", byte_interval_ms=0)
