"""The client's one seam to httpx's and httpcore's internals: nothing else in threadsync touches
them (README "Third-party internals"; ``tests/compat/test_client_transport.py`` asserts each
assumption by name, so an upgrade that breaks one fails there first).

What this module assumes of httpx 0.28 / httpcore 1.0, and why:

- **The pool's network backend** (:func:`pooled_transport`). ``httpx.AsyncHTTPTransport`` keeps
  its httpcore pool as ``_pool``, which keeps its backend as ``_network_backend`` and uses it for
  each connection it opens. httpx takes no backend argument, so ours is set there.
- **"Is this idle connection closed?"** (:class:`Stream`). httpcore's pool asks each idle
  connection's stream ``get_extra_info("is_readable")``, and its anyio stream answers
  ``get_extra_info("socket")`` with the raw socket.
- **A read response's stream is replaceable** (:func:`release`). After ``AsyncClient.send`` has
  read the body, ``Response.stream`` may be swapped for an empty one and the response still gives
  its content.
- **What ``AsyncClient.build_request`` makes** (:class:`RequestBuilder`). The base URL (kept with
  a trailing slash) joined with the path, the client's query then the request's, the client's
  headers then the request's, and ``extensions={"timeout": client.timeout.as_dict()}``.
- **How ``httpx.URL`` keeps a parsed URL** (:class:`RequestBuilder`). As ``_uri_reference``, a
  named tuple of its parts (``scheme, userinfo, host, port, path, query, fragment``), already
  normalised and percent-encoded; every property (``raw_path``, ``host``, ``str()``) reads them.
- **What ``AsyncClient.send`` adds to its transport's answer** (:func:`send`). For a client with
  no auth, no event hooks, no redirects followed and no cookies: the request bound to the
  response, and the body read (``Response.aread``), the stream closed on any failure; nothing
  else this client reads.

Why a backend of our own: httpcore's anyio one, with a cheap answer to "has the server closed this
idle connection?". httpcore's pool asks that of every idle connection each time it hands out or
takes back one: about sixteen times per request with eight connections (a 100,000-message first
sync, bench_sync, asked it 15,900 times for 1,000 requests). Its anyio stream answers by building
anyio's whole table of socket attributes to find the raw socket, a ``getpeername`` system call
included, before it polls the socket: about a tenth of the event loop's time per request went there.
Here the raw socket is looked up once per connection; the question itself (a zero-timeout poll) is
asked as before.
"""

# The method signatures are httpcore's interface, ``timeout`` parameters included.
# ruff: noqa: ASYNC109

from __future__ import annotations

import re
import select
import socket
import ssl
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import httpcore
import httpx

# httpcore's socket option type (as its backends declare it).
SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)

# The internals named above, spelled once (tests/compat reads them from here).
POOL = "_pool"  # httpx.AsyncHTTPTransport's httpcore.AsyncConnectionPool
NETWORK_BACKEND = "_network_backend"  # httpcore.AsyncConnectionPool's backend
IS_READABLE = "is_readable"  # the extra info httpcore's pool asks of an idle connection
SOCKET = "socket"  # the extra info httpcore's anyio stream answers with its raw socket
URI_REFERENCE = "_uri_reference"  # httpx.URL's parsed parts (a named tuple)


def readable(sock: socket.socket | None) -> bool:
    """Whether reading ``sock`` would not block: data, or the peer's close, is waiting.

    A socket that is gone counts as readable, as in httpcore: its next read returns the end.
    """
    fd = None if sock is None else sock.fileno()
    if fd is None or fd < 0:
        return True
    if not hasattr(select, "poll"):  # Windows
        ready, _, _ = select.select([fd], [], [], 0)
        return bool(ready)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class Stream(httpcore.AsyncNetworkStream):
    """An httpcore stream whose raw socket is looked up once, when it connects."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket: socket.socket | None = inner.get_extra_info(SOCKET)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == IS_READABLE:
            return readable(self._socket)
        return self._inner.get_extra_info(info)


class Backend(httpcore.AsyncNetworkBackend):
    """httpcore's anyio backend, its streams wrapped in :class:`Stream`."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return Stream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return Stream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def pooled_transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's own transport (HTTP/1.1, no proxy from the environment) over :class:`Backend`.

    httpx takes no network backend, so it is set on the pool httpx just built, before any
    connection exists. Should a later httpx build its pool otherwise, the transport keeps
    httpcore's default backend, which only costs the time described above.
    """
    transport = httpx.AsyncHTTPTransport(limits=limits, http1=True, http2=False, trust_env=False)
    pool = getattr(transport, POOL, None)
    if isinstance(pool, httpcore.AsyncConnectionPool) and hasattr(pool, NETWORK_BACKEND):
        setattr(pool, NETWORK_BACKEND, Backend())
    return transport


def network_backend(transport: httpx.AsyncHTTPTransport) -> Any:
    """The backend ``transport``'s pool opens connections with (None if it has no such pool)."""
    return getattr(getattr(transport, POOL, None), NETWORK_BACKEND, None)


def release(response: httpx.Response) -> None:
    """Let a read response (and its body) be freed as soon as it is dropped.

    httpx links a sent response and the stream wrapping its body both ways (the client's
    ``BoundAsyncStream`` keeps the response), a reference cycle: each response, with its body
    (a page of 100 messages is ~180 KB), waited for the cycle collector instead of being freed
    when the call returned. Under the entry point's rarer collections (see ``worker.memory``)
    that held ~45 MB of spent pages at the peak of a 100,000-message reconcile. The body was
    read and the stream closed by :func:`send` (or ``AsyncClient.send``); an empty stream in its
    place breaks the cycle.
    """
    response.stream = _SPENT


_SPENT = httpx.ByteStream(b"")


class RequestBuilder:
    """The request ``client.build_request`` makes, built without parsing its URL.

    httpx merges the base URL, the client's query and the request's by parsing and re-validating
    the URL three times, character by character: 250 us a request on the benchmark machine, a
    tenth of a reconcile's event loop (bench_reconcile). The query is encoded here instead (the
    values are ids, numbers and words), the client's headers and timeout applied as httpx applies
    them.

    The URL itself is made from the base URL's parsed parts with this request's path and query
    put in (``_uri_reference``, above): parsing the joined string again cost ~45 us a request
    (bench_freshness: 4% of the event loop's time per request). That is only faithful for what
    a parse would leave as it is: a path already percent-encoded (``profiles.fill_route``
    encodes every id whole) with no dot segment (a parse removes ``/./`` and ``/../``); any
    other path, or an httpx that keeps its URL otherwise, goes through the parse as before.
    """

    def __init__(self, client: httpx.AsyncClient, params: Mapping[str, str]) -> None:
        """``params``: the client's own query (the one it was made with)."""
        self._client = client
        # httpx keeps the base URL with a trailing slash.
        self._prefix = str(client.base_url).rstrip("/")
        self._params = dict(params)
        self._timeout = client.timeout.as_dict()
        base = getattr(client.base_url, URI_REFERENCE, None)
        fields = getattr(base, "_fields", ())
        self._base_parts = base if "path" in fields and "query" in fields else None
        self._base_path = self._base_parts.path.rstrip("/") if self._base_parts else ""

    def build(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None,
        content: bytes | None,
        headers: dict[str, str],
    ) -> httpx.Request:
        client = self._client
        query = _encode({**self._params, **params} if params else self._params)
        merged = client.headers.copy()
        merged.update(headers)
        return httpx.Request(
            method,
            self._url(path, query),
            headers=merged,
            content=content,
            extensions={"timeout": dict(self._timeout)},
        )

    def _url(self, path: str, query: str) -> httpx.URL:
        if self._base_parts is None or not _SAFE_PATH.fullmatch(path) or "/." in path:
            return httpx.URL(f"{self._prefix}{path}?{query}" if query else f"{self._prefix}{path}")
        url = httpx.URL.__new__(httpx.URL)
        parts = self._base_parts._replace(path=self._base_path + path, query=query or None)
        setattr(url, URI_REFERENCE, parts)
        return url


def _encode(params: Mapping[str, str]) -> str:
    """``urlencode(params, quote_via=quote)``, without quoting what needs none (ids, numbers and
    words: every query the client sends; a tenth of building a request went to quoting)."""
    if all(
        type(k) is str and type(v) is str and _UNRESERVED.fullmatch(k) and _UNRESERVED.fullmatch(v)
        for k, v in params.items()
    ):
        return "&".join(f"{k}={v}" for k, v in params.items())
    return urlencode(params, quote_via=quote)


# What ``quote`` leaves as it is (RFC 3986 unreserved characters), at least one of them.
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]+")

# A path a parse leaves as it is: slashes, unreserved characters and percent-escapes only.
_SAFE_PATH = re.compile(r"(?:/(?:[A-Za-z0-9._~-]|%[0-9A-Fa-f]{2})*)+")


async def send(transport: httpx.AsyncBaseTransport, request: httpx.Request) -> httpx.Response:
    """Send ``request`` through ``transport`` and read the whole answer.

    What ``AsyncClient.send`` does for this client, without the layers it never uses (an auth
    flow of no auth, a redirect loop that follows none, event hooks there are none of, a cookie
    jar: an API client keeps no cookies). Those layers cost about a tenth of the event loop's
    time per request (bench_freshness), the cookie jar alone 4%: it parsed every answer's
    headers through ``http.cookiejar``, building urllib request and response objects to do so.
    The transport maps httpcore's errors to httpx's as before.
    """
    response = await transport.handle_async_request(request)
    response.request = request
    try:
        await response.aread()
    except BaseException:
        await response.aclose()
        raise
    return response
