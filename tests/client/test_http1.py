"""The client's HTTP/1.1 transport (worker/client/http1.py): its pool, timeouts, cancellation and
error mapping, against a loopback server each test scripts byte by byte."""

from __future__ import annotations

import asyncio
import contextlib
import re
import select
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from worker.client.http1 import Connection, Http1Transport

pytestmark = pytest.mark.anyio

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Peer:
    """The server's end of one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self) -> bytes:
        """One whole request: its head, and its body by Content-Length or chunked."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        if length:
            return head + await self.reader.readexactly(int(length[1]))
        if re.search(rb"(?i)\r\ntransfer-encoding: *chunked", head):
            return head + await self.reader.readuntil(b"\r\n0\r\n\r\n")
        return head

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def close(self) -> None:
        self.writer.close()

    def reset(self) -> None:
        """Close with a TCP reset (linger 0): the client's next read fails with an OSError."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def at_end(self) -> bool:
        """Whether the client closed its end (after anything it still sent)."""
        return await self.reader.read() == b""


class Server:
    """Loopback; each accepted connection is queued for the test to drive."""

    def __init__(self) -> None:
        self.peers: asyncio.Queue[Peer] = asyncio.Queue()
        self.accepted = 0
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        await self.peers.put(Peer(reader, writer))

    async def accept(self) -> Peer:
        return await self.peers.get()

    async def answer(self, peer: Peer, data: bytes = OK) -> bytes:
        request = await peer.request()
        peer.send(data)
        return request


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    await srv.start()
    yield srv
    srv._server.close()


@pytest.fixture
async def transport() -> AsyncIterator[Http1Transport]:
    pool = Http1Transport(httpx.Limits(max_connections=4, max_keepalive_connections=4))
    yield pool
    await pool.aclose()


async def _get(
    transport: Http1Transport, url: str, method: str = "GET", **timeouts: float
) -> httpx.Response:
    request = httpx.Request(method, url, extensions={"timeout": timeouts})
    response = await transport.handle_async_request(request)
    await response.aread()
    return response


def _start(transport: Http1Transport, url: str, **timeouts: float) -> asyncio.Task[httpx.Response]:
    return asyncio.get_running_loop().create_task(_get(transport, url, "GET", **timeouts))


async def _answered(
    server: Server, transport: Http1Transport, data: bytes = OK
) -> tuple[asyncio.Task[httpx.Response], Peer]:
    """A GET of ``server.url`` started, its connection accepted, its request read and ``data``
    sent as the answer: the task and the server's end of the connection."""
    request = _start(transport, server.url)
    peer = await server.accept()
    await server.answer(peer, data)
    return request, peer


async def _answer_whole(
    server: Server, peer: Peer, tasks: dict[bytes, asyncio.Task[httpx.Response]]
) -> None:
    """Answer the request ``peer`` carries, and wait for the client to have it whole (and to
    have given the connection back): the task is found by the request's path."""
    path = (await server.answer(peer)).split(b" ")[1]
    await tasks[path]


# -- answers and keep-alive ----------------------------------------------------------------------


async def test_a_whole_answer_returns_the_connection_for_the_next_request(
    server: Server, transport: Http1Transport
) -> None:
    first = _start(transport, f"{server.url}/a")
    peer = await server.accept()
    assert (await server.answer(peer)).startswith(b"GET /a HTTP/1.1\r\nHost: 127.0.0.1:")
    assert (await first).content == b"ok"
    second = _start(transport, f"{server.url}/b?x=1")
    assert (await server.answer(peer)).startswith(b"GET /b?x=1 HTTP/1.1\r\n")
    assert (await second).content == b"ok"
    assert server.accepted == 1


async def test_the_most_recently_used_idle_connection_is_reused_first(
    server: Server, transport: Http1Transport
) -> None:
    tasks = {p: _start(transport, f"{server.url}{p.decode()}") for p in (b"/1", b"/2")}
    first, second = await server.accept(), await server.accept()
    await _answer_whole(server, first, tasks)  # first goes idle, then second
    await _answer_whole(server, second, tasks)
    third = _start(transport, f"{server.url}/3")
    assert (await server.answer(second)).startswith(b"GET /3 ")
    await third


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
)
async def test_an_answer_that_ends_the_connection_is_not_reused(
    server: Server, transport: Http1Transport, answer: bytes
) -> None:
    first, peer = await _answered(server, transport, answer)
    assert (await first).content == b"ok"
    assert await peer.at_end()  # closed by the client, the server's close not awaited
    second = _start(transport, server.url)
    await server.answer(await server.accept())
    await second
    assert server.accepted == 2


async def test_a_body_delimited_by_the_close_ends_with_it(
    server: Server, transport: Http1Transport
) -> None:
    request, peer = await _answered(
        server, transport, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil "
    )
    peer.send(b"the end")
    peer.close()
    assert (await request).content == b"until the end"
    assert transport._open == set()


async def test_chunked_body_after_informational_answers(
    server: Server, transport: Http1Transport
) -> None:
    request = _start(transport, server.url)
    peer = await server.accept()
    await server.answer(
        peer,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-Id: r1\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    response = await request
    assert (response.status_code, response.content) == (201, b"hello world")
    assert response.headers.multi_items() == [("transfer-encoding", "chunked"), ("x-id", "r1")]
    assert response.reason_phrase == "Created"
    assert len(transport._open) == 1  # kept alive


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_answers_keep_the_connection(
    server: Server, transport: Http1Transport, status: int
) -> None:
    request, peer = await _answered(
        server, transport, b"HTTP/1.1 %d X\r\nContent-Length: 7\r\n\r\n" % status
    )
    assert (await request).content == b""
    again = _start(transport, server.url)
    await server.answer(peer)
    assert (await again).content == b"ok"


async def test_head_answer_with_a_length_does_not_wait_for_a_body(
    server: Server, transport: Http1Transport
) -> None:
    request = asyncio.get_running_loop().create_task(_get(transport, server.url, "HEAD"))
    peer = await server.accept()
    sent = await server.answer(peer, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    assert sent.startswith(b"HEAD / ")
    response = await request
    assert (response.status_code, response.content) == (200, b"")
    assert response.headers["content-length"] == "1000"
    again = _start(transport, server.url)  # the same connection, its next answer read as such
    await server.answer(peer)
    assert (await again).content == b"ok"
    assert server.accepted == 1


async def test_bytes_after_a_head_answer_make_its_connection_unfit(
    server: Server, transport: Http1Transport
) -> None:
    request = asyncio.get_running_loop().create_task(_get(transport, server.url, "HEAD"))
    peer = await server.accept()
    await server.answer(peer, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody")
    assert (await request).content == b""
    assert await peer.at_end()  # closed, not reused


async def test_gzip_is_decoded_by_httpx_on_read(server: Server, transport: Http1Transport) -> None:
    import gzip  # noqa: PLC0415

    body = gzip.compress(b'{"id": "msg_1"}')
    request = _start(transport, server.url)
    await server.answer(
        await server.accept(),
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body),
    )
    assert (await request).json() == {"id": "msg_1"}


async def test_a_streamed_body_is_sent_chunked_or_by_its_length(
    server: Server, transport: Http1Transport
) -> None:
    async def parts() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b""
        yield b"defg"

    loop = asyncio.get_running_loop()
    chunked = httpx.Request("POST", server.url, content=parts())
    sent = loop.create_task(transport.handle_async_request(chunked))
    peer = await server.accept()
    wire = await server.answer(peer)
    assert wire.endswith(b"\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in wire
    await sent
    sized = httpx.Request("POST", server.url, content=parts(), headers={"Content-Length": "7"})
    sent = loop.create_task(transport.handle_async_request(sized))
    assert (await server.answer(peer)).endswith(b"\r\n\r\nabcdefg")
    await sent


# -- errors, as httpx's transport raises them ----------------------------------------------------


async def test_server_closing_before_answering(server: Server, transport: Http1Transport) -> None:
    request = _start(transport, server.url)
    peer = await server.accept()
    await peer.request()
    peer.close()
    with pytest.raises(httpx.RemoteProtocolError, match=r"^Server disconnected without sending"):
        await request
    assert transport._open == set()


@pytest.mark.parametrize(
    "partial",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Le",
    ],
)
async def test_server_closing_mid_answer(
    server: Server, transport: Http1Transport, partial: bytes
) -> None:
    request, peer = await _answered(server, transport, partial)
    peer.close()
    with pytest.raises(httpx.RemoteProtocolError, match="without sending complete message body"):
        await request


async def test_a_body_failing_after_the_head_fails_its_read(
    server: Server, transport: Http1Transport
) -> None:
    """As httpx's transport: the head was whole, so the response is returned (status,
    headers), and reading its body raises the failure; the connection is not kept."""
    loop = asyncio.get_running_loop()
    sent = loop.create_task(transport.handle_async_request(httpx.Request("GET", server.url)))
    peer = await server.accept()
    await server.answer(peer, b"HTTP/1.1 503 Busy\r\nContent-Length: 10\r\nX-Id: r1\r\n\r\nabc")
    peer.close()
    response = await sent
    assert (response.status_code, response.headers["x-id"]) == (503, "r1")
    with pytest.raises(httpx.RemoteProtocolError, match="without sending complete message body"):
        await response.aread()
    assert transport._open == set()


@pytest.mark.parametrize(
    "garbage",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",  # unasked answer
    ],
)
async def test_a_malformed_answer_is_a_protocol_error(
    server: Server, transport: Http1Transport, garbage: bytes
) -> None:
    request, peer = await _answered(server, transport, garbage)
    try:
        response = await request
    except httpx.RemoteProtocolError:
        assert transport._open == set()
    else:  # the answer was whole before the garbage: the connection is not kept
        assert response.content == b"ok"
        assert await peer.at_end()
        assert transport._open == set()


async def test_a_reset_is_a_read_error(server: Server, transport: Http1Transport) -> None:
    request = _start(transport, server.url)
    peer = await server.accept()
    await peer.request()
    peer.reset()
    with pytest.raises(httpx.ReadError):
        await request


async def test_refused_connection_is_a_connect_error(transport: Http1Transport) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(httpx.ConnectError) as caught:
            await _get(transport, f"http://127.0.0.1:{port}/")
    assert caught.value.request.url.port == port
    assert transport._count() == 0


async def test_connect_timeout(transport: Http1Transport, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection not made within the connect timeout: ConnectTimeout, its slot freed."""
    loop = asyncio.get_running_loop()
    forever = asyncio.Event()

    async def hanging(*args: object, **kwargs: object) -> None:
        await forever.wait()

    monkeypatch.setattr(loop, "create_connection", hanging)
    with pytest.raises(httpx.ConnectTimeout):
        await _get(transport, "http://127.0.0.1:9/", connect=0)
    assert transport._count() == 0


async def test_tls_failure_is_a_connect_error(server: Server, transport: Http1Transport) -> None:
    """A server that is not TLS: the handshake fails before any byte of the request left."""
    request = _start(transport, f"https://127.0.0.1:{server.port}/")
    peer = await server.accept()
    peer.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    peer.close()
    with pytest.raises(httpx.ConnectError):
        await request


@pytest.mark.parametrize("url", ["ftp://api.invalid/x", "ws://api.invalid/x"])
async def test_other_schemes_are_unsupported(transport: Http1Transport, url: str) -> None:
    with pytest.raises(httpx.UnsupportedProtocol):
        await _get(transport, url)


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-A", "v\r\nX-Injected: 1"), ("X-A", "v\nX"), ("X-A", "v\rX"), ("X-A", "v\x00"),
     ("X-A\r\nX-B", "v"), ("X A", "v"), ("", "v")],
)  # fmt: skip
async def test_a_header_breaking_the_framing_is_refused_unsent(
    server: Server, transport: Http1Transport, name: str, value: str
) -> None:
    request = httpx.Request("GET", server.url, headers={name: value})
    with pytest.raises(httpx.LocalProtocolError) as caught:
        await transport.handle_async_request(request)
    assert caught.value.request is request
    assert server.accepted == 0


@pytest.mark.parametrize("first_words", [b"", b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"])
async def test_a_new_connection_closed_before_its_request_fails_at_once(
    server: Server, transport: Http1Transport, monkeypatch: pytest.MonkeyPatch, first_words: bytes
) -> None:
    """The server closes (or speaks, unasked) as the connection is made, and the loop hears it
    before the request is written: the request fails at once, instead of waiting for an answer,
    and as a failure to connect: no byte of it left, so the API client may send a create again."""
    loop = asyncio.get_running_loop()
    create_connection = loop.create_connection

    async def heard_first(*args: Any, **kwargs: Any) -> Any:
        made = await create_connection(*args, **kwargs)
        protocol, lost = made[1], asyncio.Event()
        connection_lost = protocol.connection_lost

        def heard(exc: Exception | None) -> None:
            connection_lost(exc)
            lost.set()

        monkeypatch.setattr(protocol, "connection_lost", heard)
        peer = await server.accept()
        peer.send(first_words)
        peer.close()
        await lost.wait()  # the protocol heard it before the request is written
        return made

    monkeypatch.setattr(loop, "create_connection", heard_first)
    with pytest.raises(httpx.ConnectError, match=r"^Server closed the new connection before"):
        await _get(transport, server.url)
    assert transport._count() == 0


# -- timeouts ------------------------------------------------------------------------------------


async def test_read_timeout_when_no_byte_comes(server: Server, transport: Http1Transport) -> None:
    request = _start(transport, server.url, read=0.01)
    peer = await server.accept()
    await peer.request()
    with pytest.raises(httpx.ReadTimeout):
        await request
    assert await peer.at_end()  # the connection closed
    assert transport._count() == 0


async def test_the_read_timer_moves_with_data_and_fires_on_silence(
    server: Server, transport: Http1Transport
) -> None:
    """One timer per request: when it fires after data came, it is armed again for what is
    left of the read timeout from the last byte; only silence for the whole timeout fails."""
    request = _start(transport, server.url, read=1000.0)
    peer = await server.accept()
    await peer.request()
    (connection,) = transport._open
    loop = asyncio.get_running_loop()
    armed = connection._timer
    assert armed is not None
    armed.cancel()  # fired by hand below
    connection._last_read = loop.time() - 400.0  # a byte came 400 s ago
    connection._on_timer()
    assert connection._timer is not None
    assert connection._timer is not armed
    assert connection._timer.when() == pytest.approx(connection._last_read + 1000.0)
    assert not request.done()
    connection._last_read = loop.time() - 1000.0  # silent for the whole timeout
    connection._on_timer()
    with pytest.raises(httpx.ReadTimeout):
        await request


async def test_no_timer_outlives_its_request(server: Server, transport: Http1Transport) -> None:
    request = _start(transport, server.url, read=1000.0)
    peer = await server.accept()
    await peer.request()
    (connection,) = transport._open
    timer = connection._timer
    assert timer is not None
    peer.send(OK)
    await request
    assert timer.cancelled()
    assert connection._timer is None


async def test_write_timeout_when_the_server_reads_nothing(
    server: Server, transport: Http1Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body the server does not read fills the socket's buffers, then asyncio's: past the
    write timeout, WriteTimeout; the connection is closed, and the answer it will never get is
    not failed later (nobody would retrieve that failure: asyncio would log it)."""
    body = b"x" * (64 * 1024 * 1024)  # more than loopback's buffers hold
    request = httpx.Request("POST", server.url, content=body, extensions={"timeout": {"write": 0}})
    made = asyncio.Event()  # the client's side of the connect may finish after the server's
    request_made = Connection.request

    async def request_once_made(self: Connection, *args: Any) -> httpx.Response:
        made.set()
        return await request_made(self, *args)

    monkeypatch.setattr(Connection, "request", request_once_made)
    sent = asyncio.get_running_loop().create_task(transport.handle_async_request(request))
    await server.accept()  # reads nothing
    await made.wait()
    (connection,) = transport._open
    answer = connection._waiter
    assert answer is not None
    lost = asyncio.Event()
    connection_lost = connection.connection_lost

    def heard(exc: Exception | None) -> None:
        connection_lost(exc)
        lost.set()

    monkeypatch.setattr(connection, "connection_lost", heard)
    with pytest.raises(httpx.WriteTimeout):
        await sent
    assert transport._count() == 0
    await lost.wait()  # what the protocol does last happened
    assert not answer.done()


async def test_an_endless_answer_head_is_a_protocol_error(
    server: Server, transport: Http1Transport
) -> None:
    """Headers that never end (one value growing without bound) fail once past 100 KB, as
    h11's limit in httpcore, instead of growing until the read timeout."""
    request = _start(transport, server.url)
    peer = await server.accept()
    await peer.request()
    peer.send(b"HTTP/1.1 200 OK\r\nX-Endless: ")
    with contextlib.suppress(ConnectionError):  # the client gave up, closing the connection
        for _ in range(64):  # 4 MB, then the close (a client with no limit fails otherwise)
            if request.done():
                break
            peer.send(b"a" * 65536)
            await peer.writer.drain()
    peer.close()
    with pytest.raises(httpx.RemoteProtocolError, match="head"):
        await request


async def test_pool_timeout_when_every_connection_is_busy(server: Server) -> None:
    async with Http1Transport(httpx.Limits(max_connections=1)) as pool:
        busy = _start(pool, server.url)
        peer = await server.accept()
        await peer.request()
        with pytest.raises(httpx.PoolTimeout):
            await _get(pool, server.url, pool=0)
        assert not pool._waiters
        peer.send(OK)
        await busy
        assert server.accepted == 1


# -- the pool's limits ---------------------------------------------------------------------------


async def test_waiters_are_served_in_arrival_order_on_the_freed_connection(server: Server) -> None:
    async with Http1Transport(httpx.Limits(max_connections=1)) as pool:
        tasks = [_start(pool, f"{server.url}/{n}") for n in range(4)]
        peer = await server.accept()
        order = [(await server.answer(peer)).split(b" ")[1] for _ in tasks]
        await asyncio.gather(*tasks)
    assert order == [b"/0", b"/1", b"/2", b"/3"]
    assert server.accepted == 1


async def test_a_cancelled_request_closes_its_connection_and_frees_its_slot(
    server: Server,
) -> None:
    """``api.request_timeout`` cancels an attempt mid-answer: nothing half-read goes back to
    the pool, and the request waiting for the slot gets a new connection."""
    async with Http1Transport(httpx.Limits(max_connections=1)) as pool:
        slow = _start(pool, server.url)
        peer = await server.accept()
        await server.answer(peer, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhal")
        waiting = _start(pool, server.url)
        await asyncio.sleep(0)  # one turn of the loop: it queues
        assert len(pool._waiters) == 1
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert await peer.at_end()
        await server.answer(await server.accept())
        assert (await waiting).content == b"ok"
        assert server.accepted == 2
        (connection,) = pool._open
        assert connection._timer is None


async def test_a_waiter_cancelled_after_its_wake_up_passes_it_on(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Http1Transport(httpx.Limits(max_connections=1)) as pool:
        first = _start(pool, server.url)
        peer = await server.accept()
        await peer.request()
        second, third = _start(pool, server.url), _start(pool, server.url)
        await asyncio.sleep(0)  # one turn of the loop: both queue
        assert len(pool._waiters) == 2
        woken = pool._waiters[0]
        wake = pool._wake

        def wake_then_give_up() -> None:
            wake()
            if woken.done() and not second.done():
                second.cancel()  # the woken request gives up before it runs

        monkeypatch.setattr(pool, "_wake", wake_then_give_up)
        peer.send(OK)
        await first
        with pytest.raises(asyncio.CancelledError):
            await second
        await server.answer(peer)
        assert (await third).content == b"ok"


async def test_keepalive_limit_closes_connections_beyond_it(server: Server) -> None:
    async with Http1Transport(httpx.Limits(max_connections=3, max_keepalive_connections=1)) as pool:
        tasks = {p: _start(pool, f"{server.url}{p.decode()}") for p in (b"/1", b"/2", b"/3")}
        peers = [await server.accept() for _ in tasks]
        for peer in peers:
            await _answer_whole(server, peer, tasks)  # given back in this order
        assert pool._idle_count == 1
        assert len(pool._open) == 1
        ended = [await peer.at_end() for peer in peers[:2]]
        assert ended == [True, True]  # the longest idle ones went


async def test_an_idle_connection_past_keepalive_expiry_is_closed(server: Server) -> None:
    async with Http1Transport(httpx.Limits(keepalive_expiry=5.0)) as pool:
        first = _start(pool, server.url)
        old = await server.accept()
        await server.answer(old)
        await first
        (connection,) = pool._open
        connection.idle_since -= 6.0  # idle for longer than the expiry
        second = _start(pool, server.url)
        await server.answer(await server.accept())
        await second
        assert await old.at_end()
        assert server.accepted == 2


async def test_an_idle_connection_closed_unnoticed_by_the_loop_is_not_reused(
    server: Server, transport: Http1Transport
) -> None:
    """The peer's close waits on the socket, unread by the event loop: the poll sees it."""
    first, peer = await _answered(server, transport)
    await first
    (connection,) = transport._open
    assert connection._transport is not None
    connection._transport.pause_reading()  # the loop will not read the close
    peer.close()
    fd = connection._socket.fileno()
    await asyncio.get_running_loop().run_in_executor(None, select.select, [fd], [], [])
    assert not connection.closed  # unnoticed by the protocol
    second = _start(transport, server.url)
    await server.answer(await server.accept())
    assert (await second).content == b"ok"
    assert connection.closed


async def test_bytes_on_an_idle_connection_make_it_unfit(
    server: Server, transport: Http1Transport
) -> None:
    first, peer = await _answered(server, transport)
    await first
    peer.send(OK)  # an answer to nothing
    assert await peer.at_end()  # the client closed it
    second = _start(transport, server.url)
    await server.answer(await server.accept())
    await second


async def test_aclose_closes_every_connection_and_refuses_requests(server: Server) -> None:
    pool = Http1Transport()
    first = _start(pool, server.url)
    idle = await server.accept()
    await server.answer(idle)
    await first
    busy_request = _start(pool, server.url)
    await server.answer(idle, b"")  # read, never answered
    await pool.aclose()
    assert await idle.at_end()
    with pytest.raises(httpx.ReadError):  # a transport error: ApiClient handles those
        await busy_request
    with pytest.raises(RuntimeError, match="closed"):
        await _get(pool, server.url)


def test_connection_is_an_asyncio_protocol() -> None:
    assert issubclass(Connection, asyncio.Protocol)
