"""What ``worker/client/transport.py`` assumes of httpx's and httpcore's internals, one test per
assumption, named after it: an upgrade that breaks one fails here first, and says which."""

from __future__ import annotations

import gc
import inspect
import select
import socket
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import httpcore
import httpx
import pytest

from worker.client import transport
from worker.client.transport import (
    IS_READABLE,
    NETWORK_BACKEND,
    POOL,
    SOCKET,
    URI_REFERENCE,
    Backend,
    RequestBuilder,
    Stream,
    network_backend,
    pooled_transport,
    readable,
    release,
    send,
)

pytestmark = pytest.mark.anyio

ANSWER = (
    b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'
)


class ScriptedStream(httpcore.AsyncNetworkStream):
    """A connection that answers each request written to it with :data:`ANSWER`, and records
    the extra info it is asked for; with ``stall`` set, a read calls it, then never returns."""

    def __init__(self, stall: Callable[[], None] | None = None) -> None:
        self.pending = b""
        self.asked: list[str] = []
        self.stall = stall
        self.closed = False

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        if self.stall is not None:
            self.stall()
            await anyio.sleep_forever()
        chunk, self.pending = self.pending[:max_bytes], self.pending[max_bytes:]
        return chunk

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if buffer.endswith(b"\r\n\r\n"):
            self.pending += ANSWER

    async def aclose(self) -> None:
        self.closed = True

    def get_extra_info(self, info: str) -> Any:
        self.asked.append(info)
        return False if info == IS_READABLE else None


class ScriptedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        self.streams: list[ScriptedStream] = []
        self.stall: Callable[[], None] | None = None  # given to the next connection

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.streams.append(ScriptedStream(self.stall))
        return self.streams[-1]


# -- the pool's network backend (pooled_transport) ----------------------------------------------


def test_httpx_transport_keeps_its_httpcore_pool_as__pool() -> None:
    plain = httpx.AsyncHTTPTransport(http1=True, http2=False, trust_env=False)
    assert isinstance(getattr(plain, POOL), httpcore.AsyncConnectionPool)


def test_httpcore_pool_keeps_its_backend_as__network_backend() -> None:
    plain = httpx.AsyncHTTPTransport(http1=True, http2=False, trust_env=False)
    pool = getattr(plain, POOL)
    assert isinstance(getattr(pool, NETWORK_BACKEND), httpcore.AsyncNetworkBackend)
    ours = pooled_transport(httpx.Limits(max_connections=2, max_keepalive_connections=2))
    assert isinstance(network_backend(ours), Backend)


async def test_httpcore_pool_opens_connections_with__network_backend() -> None:
    """Setting the attribute after httpx built the pool is enough: the pool reads it for each
    connection it opens (a backend given too late would silently not be used)."""
    plain = httpx.AsyncHTTPTransport(http1=True, http2=False, trust_env=False)
    backend = ScriptedBackend()
    setattr(getattr(plain, POOL), NETWORK_BACKEND, backend)
    async with httpx.AsyncClient(transport=plain, base_url="http://api.invalid") as client:
        assert (await client.get("/a")).json() == {"ok": True}
        assert (await client.get("/b")).json() == {"ok": True}
    assert len(backend.streams) == 1  # kept alive and reused


async def test_httpcore_pool_closes_a_connection_whose_request_was_cancelled() -> None:
    """``ApiClient._send`` cancels an attempt that outlasts ``api.request_timeout``; it relies on
    httpcore closing that connection, so that nothing half-read goes back to the pool."""
    plain = httpx.AsyncHTTPTransport(http1=True, http2=False, trust_env=False)
    backend = ScriptedBackend()
    setattr(getattr(plain, POOL), NETWORK_BACKEND, backend)
    async with httpx.AsyncClient(transport=plain, base_url="http://api.invalid") as client:
        with anyio.CancelScope() as scope:
            backend.stall = scope.cancel  # the answer never comes; the caller gives up
            await client.get("/slow")
        assert scope.cancelled_caught
        assert backend.streams[0].closed  # by the pool, at once
        backend.stall = None
        assert (await client.get("/next")).json() == {"ok": True}
    assert len(backend.streams) == 2  # the next request did not get the stalled connection


# -- "is this idle connection closed?" (Stream) -------------------------------------------------


async def test_httpcore_pool_asks_idle_connections_is_readable() -> None:
    """The question :class:`Stream` answers cheaply is the one the pool asks before reusing an
    idle connection; were it asked otherwise, the override would be dead code."""
    plain = httpx.AsyncHTTPTransport(http1=True, http2=False, trust_env=False)
    backend = ScriptedBackend()
    setattr(getattr(plain, POOL), NETWORK_BACKEND, backend)
    async with httpx.AsyncClient(transport=plain, base_url="http://api.invalid") as client:
        await client.get("/a")
        await client.get("/b")
    assert IS_READABLE in backend.streams[0].asked


async def test_httpcore_anyio_stream_answers_socket_with_its_raw_socket() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        stream = await httpcore.AnyIOBackend().connect_tcp("127.0.0.1", port)
        try:
            raw = stream.get_extra_info(SOCKET)  # on asyncio, a TransportSocket around it
            assert raw.fileno() >= 0  # what readable() polls
            assert raw.getpeername() == ("127.0.0.1", port)
        finally:
            await stream.aclose()


async def test_httpcore_anyio_stream_is_readable_means_data_or_close_waiting() -> None:
    """:func:`readable` gives the answer httpcore's own anyio stream gives, in each state."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        theirs = await httpcore.AnyIOBackend().connect_tcp("127.0.0.1", port)
        ours = Stream(theirs)
        peer, _ = listener.accept()
        try:
            assert theirs.get_extra_info(IS_READABLE) is False
            assert ours.get_extra_info(IS_READABLE) is False
            peer.sendall(b"x")
            _until_readable(theirs)
            assert ours.get_extra_info(IS_READABLE) is True
            assert await theirs.read(1) == b"x"
            assert theirs.get_extra_info(IS_READABLE) is False
            assert ours.get_extra_info(IS_READABLE) is False
            peer.close()
            _until_readable(theirs)
            assert ours.get_extra_info(IS_READABLE) is True
        finally:
            peer.close()
            await ours.aclose()


def _until_readable(stream: httpcore.AsyncNetworkStream) -> None:
    """Block (no sleep, no timeout) until loopback delivered what the peer did; nothing else
    runs on the loop meanwhile."""
    sock = stream.get_extra_info(SOCKET)
    select.select([sock.fileno()], [], [])
    assert stream.get_extra_info(IS_READABLE) is True
    assert readable(sock)


@pytest.mark.parametrize(
    ("interface", "ours", "methods"),
    [
        (httpcore.AsyncNetworkBackend, Backend, ("connect_tcp", "connect_unix_socket", "sleep")),
        (
            httpcore.AsyncNetworkStream,
            Stream,
            ("read", "write", "aclose", "start_tls", "get_extra_info"),
        ),
    ],
)
def test_httpcore_network_interfaces_have_the_signatures_transport_wraps(
    interface: type, ours: type, methods: tuple[str, ...]
) -> None:
    """Every method the wrappers forward exists on httpcore's interface with the same
    parameters, and httpcore's anyio backend (the one wrapped) implements the backend's."""
    assert issubclass(httpcore.AnyIOBackend, httpcore.AsyncNetworkBackend)
    for name in methods:
        wanted = list(inspect.signature(getattr(interface, name)).parameters)
        assert list(inspect.signature(getattr(ours, name)).parameters) == wanted, name
    if interface is httpcore.AsyncNetworkBackend:
        for name in methods:
            theirs = inspect.signature(getattr(httpcore.AnyIOBackend, name)).parameters
            assert list(theirs) == list(inspect.signature(getattr(ours, name)).parameters)


# -- a read response's stream is replaceable (release) ------------------------------------------


async def test_httpx_response_stream_is_replaceable_after_read() -> None:
    """After ``send`` read the body, swapping ``Response.stream`` keeps what the client reads
    (status, headers, content) and frees the response without the cycle collector."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "msg_1"}, headers={"x-request-id": "req_1"})

    freed: list[weakref.ref[httpx.Response]] = []
    gc.disable()
    try:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
            response = await client.send(client.build_request("GET", "http://api.invalid/m"))
            release(response)
            assert response.status_code == 200
            assert response.headers["x-request-id"] == "req_1"
            assert response.json() == {"id": "msg_1"}
            assert response.content == b'{"id":"msg_1"}'
            freed.append(weakref.ref(response))
            del response
            assert freed[0]() is None
    finally:
        gc.enable()


# -- what AsyncClient.build_request makes (RequestBuilder) -------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "params", "content"),
    [
        ("GET", "/threads/thread%201%2Fx/messages", {"limit": "7", "after": "msg_a"}, None),
        ("GET", "/threads/t/messages/m", None, None),
        ("POST", "/threads/t/messages", None, b'{"role":"user","content":"hi"}'),
        ("DELETE", "/threads/t/messages/m", {"order": "desc"}, None),
        # Values a query must quote (or leaves empty): the encoder's slow path (a space aside:
        # httpx writes it "+", the builder "%20", as it always did).
        ("GET", "/threads/t/messages", {"after": "msg/\u00e9&x=1", "before": ""}, None),
        ("GET", "/threads/t/messages", {"run:id": "~ok.-_"}, None),
    ],
)
async def test_httpx_build_request_is_what_request_builder_makes(
    method: str, path: str, params: dict[str, str] | None, content: bytes | None
) -> None:
    """Base URL with a path (httpx adds the trailing slash), the client's query then the
    request's, the client's headers then the request's, the timeout as an extension."""
    query = {"api-version": "2024-08-01-preview"}
    async with httpx.AsyncClient(
        base_url="https://res.example.com/openai",
        params=query,
        headers={"api-key": "k", "User-Agent": "threadsync-test"},
        timeout=httpx.Timeout(30.0, connect=5.0),
    ) as client:
        assert str(client.base_url) == "https://res.example.com/openai/"
        headers = {"x-ms-client-request-id": "r1", "api-key": "k2"}
        if content is not None:
            headers["Content-Type"] = "application/json"
        built = RequestBuilder(client, query).build(method, path, params, content, headers)
        wanted = client.build_request(method, path, params=params, content=content, headers=headers)
    assert built.method == wanted.method
    assert built.url == wanted.url
    assert built.content == wanted.content
    assert built.extensions == wanted.extensions == {"timeout": client.timeout.as_dict()}
    assert sorted(built.headers.multi_items()) == sorted(wanted.headers.multi_items())


# -- how httpx.URL keeps a parsed URL (RequestBuilder) -------------------------------------------


def test_httpx_url_keeps_its_parts_as__uri_reference_a_named_tuple() -> None:
    url = httpx.URL("https://res.example.com:8443/openai/threads?api-version=1")
    parts = getattr(url, URI_REFERENCE)
    assert parts._fields == ("scheme", "userinfo", "host", "port", "path", "query", "fragment")
    assert (parts.path, parts.query) == ("/openai/threads", "api-version=1")


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/threads/thread%201%2Fx/messages", {"limit": "7", "after": "msg_a b&c=d"}),
        ("/threads/t/messages/m", None),
        ("/threads/%2E%2E/messages", None),
    ],
)
async def test_httpx_url_made_from_parts_is_the_parsed_one(
    path: str, params: dict[str, str] | None
) -> None:
    """The URL :class:`RequestBuilder` puts together from the base's parts, without a parse,
    is in every part the one httpx parses from the joined string (it skipped no parse)."""
    async with httpx.AsyncClient(
        base_url="https://res.example.com:8443/openai", params={"api-version": "2024-08-01"}
    ) as client:
        built = RequestBuilder(client, {"api-version": "2024-08-01"})
        assert built._base_parts is not None  # the parts were found: no fallback
        url = built.build("GET", path, params, None, {}).url
        parsing = RequestBuilder(client, {"api-version": "2024-08-01"})
        parsing._base_parts = None  # the joined string parsed, as before the parts were used
        parsed = parsing.build("GET", path, params, None, {}).url
    for part in ("scheme", "host", "port", "raw_path", "query", "fragment", "userinfo"):
        assert getattr(url, part) == getattr(parsed, part), part
    assert str(url) == str(parsed)


async def test_request_builder_leaves_dot_segments_to_httpx() -> None:
    """A path a parse would change (a dot segment) is parsed, as httpx would."""
    async with httpx.AsyncClient(base_url="https://res.example.com/openai") as client:
        built = RequestBuilder(client, {}).build("GET", "/threads/../messages", None, None, {})
        assert built.url == client.build_request("GET", "/threads/../messages").url
    assert built.url.raw_path == b"/openai/messages"


# -- what AsyncClient.send adds to its transport's answer (send) --------------------------------


async def test_send_answers_what_async_client_send_answers() -> None:
    """Status, headers, body and the request bound to the answer, as ``AsyncClient.send``
    gives them, and the answer's stream closed once read."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            201, content=b'{"id":"msg_1"}', headers={"x-request-id": "req_1", "Set-Cookie": "a=b"}
        )

    mock = httpx.MockTransport(answer)
    async with httpx.AsyncClient(transport=mock) as client:
        request = client.build_request("POST", "http://api.invalid/m", content=b"{}")
        theirs = await client.send(request)
        ours = await send(mock, request)
    assert ours.status_code == theirs.status_code == 201
    assert ours.headers.multi_items() == theirs.headers.multi_items()
    assert ours.content == theirs.content == b'{"id":"msg_1"}'
    assert ours.request is request
    assert ours.is_closed
    assert ours.is_stream_consumed


async def test_send_through_the_pool_reuses_the_connection_and_maps_errors() -> None:
    """Through httpx's pooled transport: the body read returns the connection to the pool (the
    next request reuses it), and httpcore's errors arrive as httpx's (the retry policy's)."""
    plain = httpx.AsyncHTTPTransport(http1=True, http2=False, trust_env=False)
    backend = ScriptedBackend()
    setattr(getattr(plain, POOL), NETWORK_BACKEND, backend)
    async with plain:
        for path in ("/a", "/b"):
            response = await send(plain, httpx.Request("GET", f"http://api.invalid{path}"))
            assert response.json() == {"ok": True}
        assert len(backend.streams) == 1
        with pytest.raises(httpx.UnsupportedProtocol):
            await send(plain, httpx.Request("GET", "ftp://api.invalid/x"))


async def test_send_cancelled_mid_answer_closes_the_connection() -> None:
    """A request cancelled while its answer is read (``api.request_timeout``) leaves nothing
    half-read in the pool: the connection is closed, the next request gets a new one."""
    plain = httpx.AsyncHTTPTransport(http1=True, http2=False, trust_env=False)
    backend = ScriptedBackend()
    setattr(getattr(plain, POOL), NETWORK_BACKEND, backend)
    async with plain:
        with anyio.CancelScope() as scope:
            backend.stall = scope.cancel
            await send(plain, httpx.Request("GET", "http://api.invalid/slow"))
        assert scope.cancelled_caught
        assert backend.streams[0].closed
        backend.stall = None
        response = await send(plain, httpx.Request("GET", "http://api.invalid/next"))
        assert response.json() == {"ok": True}
    assert len(backend.streams) == 2


def test_transport_is_the_only_module_touching_httpx_and_httpcore_internals() -> None:
    """The seam holds: no other module of the package names these internals."""
    from pathlib import Path  # noqa: PLC0415

    package = Path(transport.__file__).parent.parent
    names = (f'"{POOL}"', f'"{NETWORK_BACKEND}"', f".{POOL}", f".{NETWORK_BACKEND}", IS_READABLE)
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path != Path(transport.__file__) and any(n in path.read_text() for n in names)
    ]
    assert offenders == []
