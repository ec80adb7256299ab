"""The API client's HTTP/1.1 transport: asyncio protocols parsing with httptools, and a pool.

Why not httpx's own transport (httpcore's pool over h11): in the daemon's steady state
(bench_freshness) the HTTP stack was a third of the event loop's time, about 1,050 Python calls
per request: httpcore's pool and connection locks, shields and a cancel scope per read (anyio,
about fourteen scopes per request), and h11's pure-Python parsing. Here a request writes its
bytes once and awaits one future, which the connection's protocol resolves when httptools (C)
has parsed the whole answer; no await per read, no cancel scope, no lock.

What it keeps of httpx's transport, because the client relies on it:

- **The errors** (``worker/client/api.py`` ``_NOT_SENT``): ``ConnectError`` / ``ConnectTimeout``
  only when no byte of the request can have left (a create is retried only then); a peer that
  closes before answering gives ``RemoteProtocolError("Server disconnected without sending a
  response.")``, mid-answer ``RemoteProtocolError``, a malformed answer ``RemoteProtocolError``;
  an OSError ``ReadError`` (``WriteError`` if part of the request was still unsent); no byte for
  the read timeout ``ReadTimeout``; no free connection within the pool timeout ``PoolTimeout``.
  Header names and values that would let a CR, LF or NUL through are refused before anything
  is sent (``LocalProtocolError``, as h11 does; ``httpx.Headers`` lets them through).
- **The pool** (``httpx.Limits``): per origin, the most recently used idle connection first;
  at most ``max_connections`` open (waiters served first come, first served), at most
  ``max_keepalive_connections`` idle, none idle longer than ``keepalive_expiry``. An idle
  connection the server closed is not reused: the protocol heard the close, or a zero-timeout
  poll of its socket (:func:`worker.client.transport.readable`, httpcore's test) shows the close
  is waiting, unread by the event loop yet.
- **Cancellation** (``ApiClient`` bounds each attempt with ``anyio.move_on_after``): a cancelled
  request closes its connection, so nothing half-read goes back to the pool, and frees its slot.
- **The answer**: an ``httpx.Response`` whose stream holds the raw body, so that httpx decodes
  ``Content-Encoding`` when it is read. The body is whole when the response is returned (the
  client reads every body whole anyway), so the connection is back in the pool before then.
  An error in the body (a stall past the read timeout, a close mid-way) fails the read of the
  body, as with httpx's transport; the difference a caller can see is when the response comes:
  with its whole body (or its body's failure), not as soon as its head is read. A caller that
  streams a huge body should use httpx's transport.

asyncio only: threadsync runs anyio on its asyncio backend everywhere. No proxy, no HTTP/2 (the
client asks for neither). What it assumes of httptools is tested in
``tests/compat/test_client_transport.py``.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast

import httptools
import httpx

from worker.client.transport import SOCKET, readable

_DEFAULT_LIMITS = httpx.Limits()  # httpx's default
_DEFAULT_PORTS = {b"http": 80, b"https": 443}

# RFC 9110 token: a header name or a method.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class _Stop(Exception):
    """Raised from a parser callback to stop the parse (httptools: ``feed_data`` raises
    ``HttpParserCallbackError``); the reason is left in ``Connection._stopped``."""


# The longest answer head read (httpcore gives h11 the same limit); then RemoteProtocolError.
_MAX_HEAD = 100 * 1024

_UNKNOWN_CODING = "a Transfer-Encoding other than chunked"
_UNASKED = "an answer no request is waiting for"


class _Failing(httpx.AsyncByteStream):
    """The body of an answer that failed after its head: reading it raises the failure."""

    def __init__(self, exc: httpx.TransportError) -> None:
        self._exc = exc

    async def __aiter__(self) -> AsyncIterator[bytes]:
        raise self._exc
        yield b""  # an async generator, as httpx iterates it


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: its protocol, parser, and the one request in flight on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: tuple[bytes, str, int]) -> None:
        self.origin = origin
        self.idle_since = 0.0
        self.closed = False  # by the peer, an error, or us: never to be used again
        self.reusable = False  # the last answer left it fit for the next request
        self._loop = loop
        self._parser = self._new_parser()
        self._transport: asyncio.Transport | None = None
        self._socket: Any = None
        self._paused = False
        self._drained: asyncio.Future[None] | None = None
        # The request in flight (``_waiter`` None: none).
        self._waiter: asyncio.Future[httpx.Response] | None = None
        self._head = False
        self._stopped = ""  # why a callback stopped the parse
        self._answered = False  # a byte of the answer arrived
        self._headers_done = False
        self._informational = False
        self._unsent = False  # part of the request still in asyncio's buffer when written
        self._head_bytes = 0  # bytes read while the answer's head was incomplete
        self._status = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        # The read timeout: one timer per request, re-armed only when it expires.
        self._timer: asyncio.TimerHandle | None = None
        self._read_timeout = 0.0
        self._last_read = 0.0

    def _new_parser(self) -> httptools.HttpResponseParser:
        """A parser as lax as h11 where that is safe: bare LF line ends, blanks after a chunk
        size, a Content-Length beside chunked (chunked wins, RFC 9112 6.3). Still refused, where
        h11 reads them: control characters and obsolete folding in header values (llhttp's
        leniency for them lets NUL through too), a repeated (equal) Content-Length, an empty
        chunk extension."""
        parser = httptools.HttpResponseParser(self)
        parser.set_dangerous_leniencies(
            lenient_chunked_length=True,
            lenient_optional_cr_before_lf=True,
            lenient_spaces_after_chunk_size=True,
        )
        return parser

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports do not subclass asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        self._socket = transport.get_extra_info(SOCKET)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            self._last_read = self._loop.time()
        self._answered = True
        if not self._headers_done:
            # httptools grows a header without bound: a head past the limit (counted in whole
            # reads before this one, so never a body that came with the head) is refused.
            if self._head_bytes > _MAX_HEAD:
                self._fail(httpx.RemoteProtocolError("Answer head larger than 100 KB."))
                return
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            # One of the callbacks below stopped the parse, saying why in ``_stopped``.
            self._fail(httpx.RemoteProtocolError(f"Invalid answer: {self._stopped}."))
        except httptools.HttpParserUpgrade:
            self.reusable = False
            self._answer(reusable=False)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"Invalid answer: {exc}"))

    def eof_received(self) -> bool:
        # Unfit from now on: over TLS a close_notify arrives here a few loop turns before the
        # socket itself closes, and a request written meanwhile would be dropped unsent.
        self.closed = True
        self.reusable = False
        return False  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if self._waiter is None:
            return
        if exc is not None:
            kind = httpx.WriteError if self._unsent and not self._answered else httpx.ReadError
            self._fail(kind(str(exc) or type(exc).__name__))
        elif self._headers_done and self._delimited_by_close():
            self._answer(reusable=False)
        elif not self._answered:
            self._fail(httpx.RemoteProtocolError("Server disconnected without sending a response."))
        else:
            self._fail(
                httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body"
                )
            )

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None:
            self._stopped = _UNASKED
            raise _Stop
        self._reason = b""
        self._headers = []
        self._body = []
        self._headers_done = False

    def on_status(self, reason: bytes) -> None:
        self._reason += reason  # in pieces, when the status line came in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done:
            return  # a chunked body's trailer: dropped, as h11 does (never the answer's headers)
        # llhttp leaves the whitespace that ends a value (h11, RFC 9110: not part of it).
        self._headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._informational = True  # 100 Continue, 103 Early Hints: skipped
            return
        if status < 100 or status == 101:  # no status line h11 reads; an upgrade not asked for
            self._stopped = f"status {status}"
            raise _Stop
        self._status = status
        self._headers_done = True
        if self._unknown_coding():
            self._stopped = _UNKNOWN_CODING
            raise _Stop
        if self._head:
            # The answer to HEAD has no body, whatever its headers say, but the parser is not
            # told the method: the answer is complete here, and the next one gets a new parser
            # (this one reads on as body whatever else came with these bytes: nothing should).
            self._answer(reusable=parser.should_keep_alive())
            self._parser = self._new_parser()

    def on_body(self, body: bytes) -> None:
        if self._waiter is None:
            self.reusable = False  # bytes after an answer to HEAD: out of step
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self._answer(reusable=self._parser.should_keep_alive())

    # -- the request in flight -----------------------------------------------------------------

    async def request(
        self, request: httpx.Request, head: bytes, timeouts: dict[str, Any]
    ) -> httpx.Response:
        """Send ``request`` (``head``: its request line and headers) and await the whole answer."""
        transport = self._transport
        assert transport is not None
        if self.closed:  # a new connection the server closed (or spoke on) before this request:
            # nothing of it was written, so it is a failure to connect (a create may be re-sent).
            raise httpx.ConnectError("Server closed the new connection before the request.")
        waiter: asyncio.Future[httpx.Response] = self._loop.create_future()
        self._waiter = waiter
        self._head = request.method == "HEAD"
        self._answered = self._headers_done = self._informational = False
        self._head_bytes = 0
        try:
            content: bytes | None = request.content
        except httpx.RequestNotRead:
            content = None
        if content is not None:
            if len(content) < 65536:
                transport.write(head + content)
            else:
                transport.writelines((head, content))
        else:
            transport.write(head)
            await self._write_stream(request, timeouts.get("write"))
            if waiter.done():
                self.reusable = False  # answered before the body was all sent
        if self._paused:
            await self._drain(timeouts.get("write"))
        self._unsent = transport.get_write_buffer_size() > 0
        read = timeouts.get("read")
        if read is not None and not waiter.done():
            self._read_timeout = read
            self._last_read = now = self._loop.time()
            self._timer = self._loop.call_at(now + read, self._on_timer)
        try:
            return await waiter
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    async def _write_stream(self, request: httpx.Request, write_timeout: float | None) -> None:
        """A body not read beforehand: written as it comes, chunked unless its length is known."""
        transport = self._transport
        assert transport is not None
        chunked = "content-length" not in request.headers
        stream = request.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        async for chunk in stream:
            if self.closed:
                break
            if chunk:
                transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            if self._paused:
                await self._drain(write_timeout)
        if chunked and not self.closed:
            transport.write(b"0\r\n\r\n")

    async def _drain(self, write_timeout: float | None) -> None:
        """Wait until asyncio's write buffer is below its high mark (``timeout``: WriteTimeout)."""
        self._drained = self._loop.create_future()
        try:
            async with asyncio.timeout(write_timeout):
                await self._drained
        except TimeoutError:
            raise httpx.WriteTimeout("timed out") from None
        finally:
            self._drained = None

    def _on_timer(self) -> None:
        """The read timeout: no byte for ``read`` seconds. Data since the timer was armed moves
        the deadline; the timer is armed again for what is left of it, if anything."""
        self._timer = None
        if self._waiter is None:
            return
        deadline = self._last_read + self._read_timeout
        if deadline > self._loop.time():
            self._timer = self._loop.call_at(deadline, self._on_timer)
            return
        self._fail(httpx.ReadTimeout("timed out"))

    def _answer(self, *, reusable: bool) -> None:
        waiter = self._waiter
        if waiter is None:
            return
        self._waiter = None
        version = b"HTTP/1.0" if self._parser.get_http_version() == "1.0" else b"HTTP/1.1"
        # Never reuse an HTTP/1.0 connection, even one the answer says to keep alive: as h11.
        self.reusable = reusable and not self.closed and version == b"HTTP/1.1"
        response = self._response(version, httpx.ByteStream(b"".join(self._body)))
        self._body = []
        if not waiter.done():
            waiter.set_result(response)

    def _response(self, version: bytes, stream: httpx.AsyncByteStream) -> httpx.Response:
        return httpx.Response(
            self._status,
            headers=self._headers,
            stream=stream,
            extensions={"http_version": version, "reason_phrase": self._reason},
        )

    def _fail(self, exc: Exception) -> None:
        """The request in flight fails; once the answer's head was whole, as httpx's transport
        fails it: the response is returned, and reading its body raises ``exc``."""
        waiter = self._waiter
        self._waiter = None
        self.abort()
        if waiter is None or waiter.done():
            return
        if self._headers_done and isinstance(exc, httpx.TransportError):
            version = b"HTTP/1.0" if self._parser.get_http_version() == "1.0" else b"HTTP/1.1"
            waiter.set_result(self._response(version, _Failing(exc)))
        else:
            waiter.set_exception(exc)

    def _unknown_coding(self) -> bool:
        """Whether the body is framed by any transfer coding but chunked alone, in one header
        or several (h11 refuses them all; llhttp reads ``gzip, chunked`` as chunked and would
        hand back the body still gzip-coded, or reads another coding to the close)."""
        codings = [
            coding.strip().lower()
            for name, value in self._headers
            if name.lower() == b"transfer-encoding"
            for coding in value.split(b",")
        ]
        return bool(codings) and codings != [b"chunked"]

    def _delimited_by_close(self) -> bool:
        """Whether the answer's body ends where the connection does (neither a length nor
        chunked, and a body allowed): then the peer's close completes it."""
        if self._head or self._status in (204, 304):
            return False
        return not any(
            name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self._headers
        )

    # -- the pool's questions ------------------------------------------------------------------

    def alive(self) -> bool:
        """Fit for a request: not closed, the last answer allowed it, and nothing (the peer's
        close) waiting on its socket that the event loop has not read yet."""
        return not self.closed and self.reusable and not readable(self._socket)

    def shut(self) -> None:
        """Close at once, the request in flight (if any) failing: the transport is closing."""
        self._fail(httpx.ReadError("The transport was closed during the request."))

    def abort(self) -> None:
        """Close at once, dropping what is unsent (a cancelled or failed request), and the
        request in flight's future: nobody awaits it any more (its failure, set later, would
        go unretrieved and be logged by asyncio)."""
        self._waiter = None
        self.closed = True
        self.reusable = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()


class Http1Transport(httpx.AsyncBaseTransport):
    """httpx's transport interface over :class:`Connection` and a pool of them (module doc)."""

    def __init__(
        self, limits: httpx.Limits = _DEFAULT_LIMITS, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._max_connections = limits.max_connections
        self._max_idle = (
            limits.max_keepalive_connections
            if limits.max_keepalive_connections is not None
            else float("inf")
        )
        self._expiry = limits.keepalive_expiry
        self._ssl_context = ssl_context
        self._idle: dict[tuple[bytes, str, int], deque[Connection]] = {}
        self._idle_count = 0
        self._open: set[Connection] = set()  # every connection counted, idle or not
        self._opening = 0  # connections being made, counted against max_connections
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("The transport is closed: no request can be sent through it.")
        url = request.url
        scheme = url.raw_scheme
        port = _DEFAULT_PORTS.get(scheme)
        if port is None:
            if not scheme:
                raise httpx.UnsupportedProtocol(
                    "Request URL is missing an 'http://' or 'https://' protocol.", request=request
                )
            raise httpx.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{scheme.decode()}://'.", request=request
            )
        origin = (scheme, url.raw_host.decode("ascii"), url.port or port)
        head = _head(request)
        timeouts: dict[str, Any] = request.extensions.get("timeout") or {}
        try:
            connection = await self._acquire(origin, timeouts)
            try:
                response = await connection.request(request, head, timeouts)
            except BaseException:
                connection.abort()
                self._drop(connection)
                raise
        except httpx.RequestError as exc:
            exc.request = request
            raise
        self._release(connection)
        return response

    async def aclose(self) -> None:
        self._closed = True
        for connection in list(self._open):
            connection.shut()
        self._open.clear()
        self._idle.clear()
        self._idle_count = 0
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(RuntimeError("The transport was closed."))

    # -- the pool ------------------------------------------------------------------------------

    async def _acquire(
        self, origin: tuple[bytes, str, int], timeouts: dict[str, Any]
    ) -> Connection:
        """An idle connection to ``origin`` fit for use, else a new one once there is room."""
        if self._waiters or not self._has_room():
            await self._wait(timeouts.get("pool"))
        connection = self._reuse(origin)
        if connection is not None:
            return connection
        if self._max_connections is not None and self._count() >= self._max_connections:
            self._evict_idle()  # an idle connection to another origin makes room
        self._opening += 1
        try:
            connection = await self._connect(origin, timeouts.get("connect"))
        except BaseException:
            self._opening -= 1
            self._wake()
            raise
        self._opening -= 1
        self._open.add(connection)
        return connection

    def _count(self) -> int:
        return len(self._open) + self._opening

    def _has_room(self) -> bool:
        return (
            self._max_connections is None
            or self._count() < self._max_connections
            or self._idle_count > 0
        )

    async def _wait(self, pool_timeout: float | None) -> None:
        """Queue (first come, first served) until a released or closed connection makes room.

        A waiter woken, then beaten to the room by a connection closing elsewhere, waits again
        at the front; one that gives up (timeout, cancellation) after being woken passes the
        wake-up on, so that no room goes unused while others wait.
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(pool_timeout):
                while True:
                    await waiter
                    if self._has_room():
                        return
                    waiter = loop.create_future()
                    self._waiters.appendleft(waiter)
        except TimeoutError:
            raise httpx.PoolTimeout("Timed out waiting for a connection from the pool.") from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._wake()  # woken: if it is leaving, the next one gets the room

    def _wake(self) -> None:
        """Wake the first waiter, if there is room for it."""
        while self._waiters and self._has_room():
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _reuse(self, origin: tuple[bytes, str, int]) -> Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        if self._expiry is not None:
            oldest = asyncio.get_running_loop().time() - self._expiry
            while idle and idle[0].idle_since < oldest:
                self._close_idle(idle.popleft())
        while idle:
            connection = idle.pop()
            self._idle_count -= 1
            if connection.alive():
                return connection
            connection.abort()
            self._open.discard(connection)
        return None

    def _release(self, connection: Connection) -> None:
        """Back to the pool after a whole answer, or closed if unfit or beyond the limits."""
        if not connection.reusable or connection.closed or self._closed:
            connection.abort()
            self._drop(connection)
            return
        connection.idle_since = asyncio.get_running_loop().time()
        self._idle.setdefault(connection.origin, deque()).append(connection)
        self._idle_count += 1
        if self._idle_count > self._max_idle:
            self._evict_idle()
        self._wake()

    def _drop(self, connection: Connection) -> None:
        self._open.discard(connection)
        self._wake()

    def _evict_idle(self) -> None:
        """Close the longest idle connection (to any origin)."""
        for idle in self._idle.values():
            if idle:
                self._close_idle(idle.popleft())
                return

    def _close_idle(self, connection: Connection) -> None:
        self._idle_count -= 1
        connection.abort()
        self._open.discard(connection)

    async def _connect(
        self, origin: tuple[bytes, str, int], connect_timeout: float | None
    ) -> Connection:
        """A new connection (TLS for https). Every failure here is before any byte was sent."""
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        context = None
        if scheme == b"https":
            if self._ssl_context is None:
                # httpx's default (certifi; SSL_CERT_FILE / SSL_CERT_DIR when set), offering
                # HTTP/1.1 by ALPN as httpcore did.
                self._ssl_context = httpx.create_ssl_context()
                self._ssl_context.set_alpn_protocols(["http/1.1"])
            context = self._ssl_context
        try:
            async with asyncio.timeout(connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: Connection(loop, origin),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                    # As anyio's connect_tcp (httpcore's): the next address after 250 ms, so a
                    # dead first address (an unrouted IPv6 one) does not take the whole timeout.
                    happy_eyeballs_delay=0.25,
                    interleave=1,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout("timed out") from None
        except OSError as exc:  # ssl.SSLError and socket.gaierror included
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        return connection


def _head(request: httpx.Request) -> bytes:
    """The request line and headers, refusing what would break the framing (CR, LF, NUL)."""
    raw = request.headers.raw
    method = request.method.encode("latin-1")
    lines = [b"%s %s HTTP/1.1\r\n" % (method, request.url.raw_path)]
    lines += [b"%s: %s\r\n" % pair for pair in raw]
    lines.append(b"\r\n")
    head = b"".join(lines)
    if (
        head.count(b"\n") != len(lines)
        or head.count(b"\r") != len(lines)
        or b"\0" in head
        or not _TOKEN.fullmatch(method)
        or not all(_TOKEN.fullmatch(name) for name, _ in raw)
    ):
        raise httpx.LocalProtocolError(
            "Illegal character in the request line or a header.", request=request
        )
    return head
