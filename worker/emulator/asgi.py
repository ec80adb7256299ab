"""The raw ASGI application: routing, auth, faults and statistics around :mod:`api`.

Raw ASGI rather than a framework because the hot path (a 100-message list page) must stay a
handful of dict lookups plus one bytes join.
"""

from __future__ import annotations

import math
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import anyio
import anyio.to_thread

from worker.emulator import api, control, identity, routes
from worker.emulator.faults import HOSTILE, FaultRule, HeldRequest, hostile, relisted
from worker.emulator.state import Emulator
from worker.emulator.wire import WireError, bad_request, dumps
from worker.jsontext import JsonTextError, loads
from worker.logs import get_logger

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = get_logger()
_JSON = (b"content-type", b"application/json")


class DroppedConnection(Exception):
    """Raised on purpose after a partial body: the server aborts the connection."""


class ClientGone(Exception):
    """The client hung up before its request body arrived whole: nothing is applied (a server
    cannot act on a request it never fully received), and nobody is left to answer."""


def create_app(emulator: Emulator) -> ASGIApp:
    """The ASGI app serving the three API families and ``/_emulator`` over ``emulator``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(emulator, receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith(control.PREFIX + "/"):
            await _control(emulator, scope, receive, send)
        elif path.rstrip("/") == identity.TOKEN_PATH:
            await _token(emulator, scope, send)
        else:
            await _api(emulator, scope, receive, send)

    return app


async def _lifespan(emulator: Emulator, receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            with emulator.lock:
                emulator.changed()  # --state: one last save on the way out
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_json(receive: Receive) -> Any:
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            # Before this check, a client killed mid-send read as an empty body: a POST
            # /conversations with no metadata and no items was applied for it.
            raise ClientGone
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    raw = b"".join(chunks)
    if not raw.strip():
        return None
    try:
        return loads(raw)  # JSON allows an escaped lone surrogate
    except JsonTextError:
        raise bad_request(
            "We could not parse the JSON body of your request.", code="invalid_json"
        ) from None


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [_JSON, (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _control(emulator: Emulator, scope: Scope, receive: Receive, send: Send) -> None:
    try:
        body = await _read_json(receive)
        result = control.handle(emulator, scope["method"], scope["path"], body)
        await _send(send, 200, dumps(result), [])
    except WireError as err:
        await _send(send, err.status, err.body(), [])
    except ClientGone:
        return


async def _token(emulator: Emulator, scope: Scope, send: Send) -> None:
    """The managed-identity token endpoint (App Service protocol, see ``identity``)."""
    query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
    if scope["method"] != "GET":
        await _send(send, 405, WireError(405, "Only GET is served here.").body(), [])
        return
    try:
        with emulator.lock:
            body = emulator.identity.issue(query, dict(scope["headers"]), emulator.wall())
    except WireError as err:
        await _send(send, err.status, err.body(), [])
        return
    await _send(send, 200, body, [])


def _ids(profile: str) -> list[tuple[bytes, bytes]]:
    request_id = secrets.token_hex(16).encode()
    headers = [(b"x-request-id", request_id)]
    if profile == "azure":
        headers.append((b"apim-request-id", str(uuid.uuid4()).encode()))
    return headers


def _throttled(wait: float, message: str) -> WireError:
    return WireError(
        429,
        message,
        code="rate_limit_exceeded",
        type_="requests",
        headers={
            "retry-after": str(max(1, math.ceil(wait))),
            "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
        },
    )


def _server_error() -> WireError:
    return WireError(
        500,
        "The server had an error while processing your request.",
        code="server_error",
        type_="server_error",
    )


def _pre_fault(rule: FaultRule | None) -> WireError | None:
    if rule is None:
        return None
    if rule.fault == "429":
        return _throttled(rule.retry_after, "Rate limit reached. Please retry after a while.")
    if rule.fault == "500":
        return _server_error()
    if rule.fault == "400":
        return bad_request("The emulator refused this request (a scripted 400 fault).")
    if rule.fault == "503":
        return WireError(
            503,
            "The service is temporarily unavailable.",
            code="service_unavailable",
            type_="server_error",
        )
    return None


async def _api(emulator: Emulator, scope: Scope, receive: Receive, send: Send) -> None:
    method: str = scope["method"]
    route = routes.parse(method, scope["path"])
    if route is None:
        err = routes.unknown_route(method, scope["path"], emulator.behaviour.unknown_route)
        emulator.record_request("unmatched", 404)
        await _send(send, 404, err.body(), _ids("openai"))
        return
    headers = _ids(route.profile)
    query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
    request_headers = dict(scope["headers"])
    agent = request_headers.get(b"user-agent", b"").decode("latin-1")
    arrived = time.monotonic()
    emulator.requests.record(arrived, request_headers.get(b"user-agent", b"").decode("latin-1"))
    body: Any = None
    applied = False
    rule: FaultRule | None = None
    try:
        with emulator.lock:
            key = routes.check_access(
                route,
                request_headers,
                query,
                emulator.api_key,
                emulator.identity,
                emulator.wall(),
                emulator.behaviour.unknown_version,
            )
        with emulator.lock:
            wait = emulator.faults.throttle(key, emulator.monotonic())
            rule = emulator.faults.pick(
                method, route.kind, route.thread_id, emulator.fault_rng, agent
            )
            delay = emulator.faults.latency(emulator.fault_rng)
        if wait > 0:
            raise _throttled(wait, f"Rate limit exceeded. Please retry after {wait:.3f} seconds.")
        if rule is not None and rule.fault == "latency":
            delay += (rule.latency_ms + emulator.fault_rng.uniform(0, rule.jitter_ms)) / 1000
        if delay > 0:
            await anyio.sleep(delay)
        if rule is not None and rule.fault == "gate":
            held = HeldRequest(route.kind, route.thread_id, agent)
            await anyio.to_thread.run_sync(emulator.gate.hold, held, abandon_on_cancel=True)
        early = _pre_fault(rule)
        if early is not None:
            raise early
        body = await _read_json(receive)
        status, payload = 200, api.handle(emulator, route, query, body)
        applied = True
    except ClientGone:
        emulator.record_request(route.template, 499)  # nginx's "client closed request"
        log.debug("emulator.client_gone", route=route.template)
        return
    except WireError as err:
        status, payload = err.status, err.body()
        headers.extend((k.encode(), v.encode()) for k, v in err.headers.items())
    if applied and rule is not None and rule.fault == "500_after_apply":
        status, payload = 500, _server_error().body()
    emulator.record_request(route.template, status)
    if route.kind == "modify":
        emulator.record_modify(
            route.thread_id or "", route.message_id or "", body, applied=applied, status=status
        )
    if status != 200 or rule is not None:  # the hot path stays silent
        log.debug(
            "emulator.request",
            route=route.template,
            status=status,
            applied=applied,
            fault=None if rule is None else rule.fault,
        )
    if rule is not None and rule.fault in HOSTILE and status == 200:
        payload = hostile(payload, rule, listing=route.kind in ("list", "thread.list"))
    if rule is not None and rule.fault == "relist" and status == 200 and route.kind == "list":
        payload = _relist(emulator, route, query, payload, rule)
    if rule is not None and rule.fault == "drop":
        await _drop(send, status, payload, headers)
    if rule is not None and rule.fault == "trickle":
        await _trickle(receive, send, status, payload, headers, rule.byte_interval_ms / 1000)
        return
    if rule is not None and rule.fault == "truncate":
        payload = payload[: max(1, len(payload) // 2)]
    await _send(send, status, payload, headers)
    if route.thread_id:
        emulator.walks.record(route.thread_id, agent, arrived, time.monotonic())


def _relist(
    emulator: Emulator, route: routes.Route, query: dict[str, str], payload: bytes, rule: FaultRule
) -> bytes:
    """The ``relist`` fault: the message named by ``after`` listed again (if it still exists)."""
    after = query.get("after")
    if not after:
        return payload
    try:
        with emulator.lock:
            cursor = loads(emulator.message(route.thread_id or "", after).json())
    except WireError:
        return payload
    return relisted(payload, cursor, rule)


async def _trickle(
    receive: Receive,
    send: Send,
    status: int,
    payload: bytes,
    headers: list[tuple[bytes, bytes]],
    every: float,
) -> None:
    """Headers promising the whole body at once, then the body one byte every ``every`` s,
    until it is all sent or the client hangs up (a server does not trickle into a closed socket
    for hours)."""
    full = [_JSON, (b"content-length", str(len(payload)).encode()), *headers]

    async def until_hung_up(scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    await send({"type": "http.response.start", "status": status, "headers": full})
    async with anyio.create_task_group() as tg:
        tg.start_soon(until_hung_up, tg.cancel_scope)
        for i in range(len(payload)):
            await anyio.sleep(every)
            more = i + 1 < len(payload)
            chunk = payload[i : i + 1]
            await send({"type": "http.response.body", "body": chunk, "more_body": more})
        tg.cancel_scope.cancel()


async def _drop(
    send: Send, status: int, payload: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """Headers promising the whole body, half of it, then an aborted connection."""
    full = [_JSON, (b"content-length", str(len(payload)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": full})
    await send(
        {"type": "http.response.body", "body": payload[: len(payload) // 2], "more_body": True}
    )
    raise DroppedConnection("emulator fault: connection dropped mid-body")
