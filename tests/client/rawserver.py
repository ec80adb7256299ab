"""A scripted HTTP/1.x server on loopback for transport conformance tests.

Each accepted connection runs the test's own ``handler(conn)``: it reads requests, writes whatever
bytes it likes (well formed or not), holds, closes or resets. The server records what a transport
could be judged by: every connection, the raw bytes received on it, the parsed requests, when the
client closed it, and how many were open at once. Tests wait on its events, never on the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

Handler = Callable[["Conn"], Awaitable[None]]


@dataclass
class RawRequest:
    """One request as it came off the wire: ``head`` and ``body`` exactly as received (the body
    still chunk-framed when chunked), ``content`` the body's bytes once unframed."""

    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    head: bytes
    body: bytes
    content: bytes

    def header(self, name: bytes) -> bytes | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[0] if values else None


class Conn:
    """One accepted connection, as the handler drives it and the test inspects it."""

    def __init__(
        self,
        server: RawServer,
        index: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.index = index
        self.reader = reader
        self.writer = writer
        self.received = bytearray()  # every byte the client sent on this connection
        self.requests: list[RawRequest] = []
        self.eof = asyncio.Event()  # the client closed (or reset) its side
        self.closed = asyncio.Event()  # this side is closed: the handler ended, or close/reset
        self._open = True

    async def _read(self, n: int) -> bytes:
        try:
            data = await self.reader.read(n)
        except ConnectionError:
            data = b""
        if not data:
            self._saw_eof()
        self.received += data
        return data

    async def _read_exactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            data = await self._read(n - len(out))
            if not data:
                raise EOFError
            out += data
        return bytes(out)

    async def _read_line(self) -> bytes:
        try:
            line = await self.reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError as exc:
            self.received += exc.partial
            self._saw_eof()
            raise EOFError from exc
        except ConnectionError as exc:
            self._saw_eof()
            raise EOFError from exc
        self.received += line
        return line

    def _saw_eof(self) -> None:
        if not self.eof.is_set():
            self.eof.set()
            self.server._closed_one(self)

    async def read_request(self) -> RawRequest | None:
        """The next request, its body read whole (Content-Length or chunked); None when the
        client closes the connection instead (cleanly or not, before or within a request)."""
        try:
            return await self._read_request()
        except EOFError:
            return None

    async def _read_request(self) -> RawRequest:
        start = len(self.received)
        line = await self._read_line()
        lines = [line]
        while line != b"\r\n":
            line = await self._read_line()
            lines.append(line)
        method, target, version = lines[0].rstrip(b"\r\n").split(b" ", 2)
        headers = [_header(raw) for raw in lines[1:-1]]
        head = bytes(self.received[start:])
        request = RawRequest(method, target, version, headers, head, b"", b"")
        length = request.header(b"content-length")
        if request.header(b"transfer-encoding") == b"chunked":
            request.content = await self._read_chunked()
        elif length is not None:
            request.content = await self._read_exactly(int(length))
        request.body = bytes(self.received[start + len(head) :])
        self.requests.append(request)
        self.server._received(request)
        return request

    async def _read_chunked(self) -> bytes:
        """A chunked body, strictly: hex size, CRLF after each chunk, no trailers expected."""
        content = bytearray()
        while True:
            size = int((await self._read_line()).rstrip(b"\r\n"), 16)
            if size == 0:
                if await self._read_line() != b"\r\n":
                    raise ValueError("trailers in a request body")
                return bytes(content)
            content += await self._read_exactly(size)
            if await self._read_exactly(2) != b"\r\n":
                raise ValueError("a chunk not followed by CRLF")

    async def send(self, data: bytes) -> None:
        """Write ``data`` and wait until the kernel has taken it (a client gone is not an error:
        the test asserts what the client saw)."""
        self.writer.write(data)
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    async def drip(self, data: bytes, pause: float) -> None:
        """``data`` a byte at a time, ``pause`` seconds apart (the one place time is the point)."""
        for i in range(len(data)):
            await self.send(data[i : i + 1])
            await asyncio.sleep(pause)

    async def wait_eof(self) -> None:
        """Read (and record) until the client closes its side."""
        while not self.eof.is_set():
            await self._read(65536)

    async def hold(self) -> None:
        """Never answer, until the test ends (the server cancels its handlers); what the client
        sends meanwhile is recorded, and its close noticed."""
        await self.wait_eof()
        await asyncio.Event().wait()

    async def stall(self) -> None:
        """Neither read nor answer, until the test ends: the client's writes back up."""
        await asyncio.Event().wait()

    def close(self) -> None:
        """Close this side cleanly (FIN)."""
        if self._open:
            self._open = False
            self.writer.close()
            self.closed.set()
            self.server._closed_one(self)

    def ragged_close(self) -> None:
        """End the connection with a FIN but no TLS close_notify (a ragged TLS EOF, as many
        servers and load balancers do); over plain TCP, the same as :meth:`close`."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None and self._open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        if self._open:
            self._open = False
            self.writer.transport.abort()
            self.closed.set()
            self.server._closed_one(self)

    def reset(self) -> None:
        """Abort the connection with a TCP reset (RST), as a crashed server's kernel does."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if self._open:
            self._open = False
            self.writer.transport.abort()
            self.closed.set()
            self.server._closed_one(self)


def _header(raw: bytes) -> tuple[bytes, bytes]:
    name, _, value = raw.rstrip(b"\r\n").partition(b":")
    return name, value.strip(b" \t")


@dataclass
class RawServer:
    """The listening side; ``connections`` in the order they were accepted."""

    handler: Handler
    host: str = "127.0.0.1"
    port: int = 0
    connections: list[Conn] = field(default_factory=list)
    requests: list[RawRequest] = field(default_factory=list)
    open_now: int = 0
    most_open: int = 0  # the most connections open at once (a connection counts until its EOF)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.authority}"

    @property
    def tls_url(self) -> str:
        return f"https://{self.authority}"

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Conn(self, len(self.connections), reader, writer)
        self.connections.append(conn)
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        await self._notify()
        try:
            await self.handler(conn)
        except (EOFError, ConnectionError):
            pass
        except asyncio.CancelledError:
            # Only the server's shutdown cancels a handler; asyncio would log a cancelled one.
            pass
        finally:
            conn.close()
            self._tasks.discard(task)

    def _closed_one(self, conn: Conn) -> None:
        """``conn`` is closed on either side; it stops counting as open at the first."""
        if conn.eof.is_set() + conn.closed.is_set() == 1:
            self.open_now -= 1

    def _received(self, request: RawRequest) -> None:
        self.requests.append(request)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds (checked after each connection and request)."""
        async with self._changed:
            await self._changed.wait_for(predicate)

    async def until_requests(self, n: int) -> None:
        await self.until(lambda: len(self.requests) >= n)

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for conn in self.connections:
            conn.close()


@contextlib.asynccontextmanager
async def serve(
    handler: Handler,
    *,
    ssl_context: ssl.SSLContext | None = None,
    sock: socket.socket | None = None,
    host: str = "127.0.0.1",
) -> AsyncIterator[RawServer]:
    """Serve ``handler`` on a fresh port of ``host`` (or on ``sock``, already bound) until the
    block ends; then every handler still running is cancelled and every connection closed."""
    server = RawServer(handler, host)
    if sock is not None:
        listener = await asyncio.start_server(server._accepted, sock=sock, ssl=ssl_context)
    else:
        listener = await asyncio.start_server(server._accepted, host, 0, ssl=ssl_context)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        await server._shutdown()
        await listener.wait_closed()


# -- answers ---------------------------------------------------------------------------------------


def answer(
    status: int = 200,
    body: bytes = b"",
    headers: Iterable[tuple[str, str] | tuple[bytes, bytes]] = (),
    *,
    reason: bytes = b"OK",
    version: bytes = b"HTTP/1.1",
    length: bool = True,
) -> bytes:
    """A response's bytes: status line, ``headers`` in order, then Content-Length (unless
    ``length`` is false) and ``body``."""
    lines = [b"%s %d %s" % (version, status, reason)]
    for name, value in headers:
        raw_name = name.encode() if isinstance(name, str) else name
        raw_value = value.encode() if isinstance(value, str) else value
        lines.append(raw_name + b": " + raw_value)
    if length:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chunked(pieces: Iterable[bytes], trailers: bytes = b"") -> bytes:
    """``pieces`` framed as a chunked body (empty pieces skipped), then ``trailers`` (raw
    ``Name: value\\r\\n`` lines)."""
    out = bytearray()
    for piece in pieces:
        if piece:
            out += b"%x\r\n%s\r\n" % (len(piece), piece)
    return bytes(out) + b"0\r\n" + trailers + b"\r\n"


async def answer_each(conn: Conn, make: Callable[[RawRequest], bytes]) -> None:
    """Answer every request on ``conn`` with ``make(request)`` until the client closes."""
    while (request := await conn.read_request()) is not None:
        await conn.send(make(request))


def reserved_port() -> socket.socket:
    """A loopback socket bound to a port but not listening: connecting to it is refused until
    the test hands it to :func:`serve` (no other process can take the port meanwhile)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock
