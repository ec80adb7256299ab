"""The client's one seam to third-party internals on its request path (httpx's, httptools'):
nothing else in threadsync relies on them (README "Third-party internals";
``tests/compat/test_client_transport.py`` asserts each assumption by name, so an upgrade that
breaks one fails there first).

What the client assumes of httpx 0.28 and httptools 0.9, and why:

- **httptools' response parser** (:mod:`worker.client.http1`, the transport
  :func:`pooled_transport` makes). ``HttpResponseParser(protocol)`` calls the protocol's
  ``on_message_begin``, ``on_status(reason)``, ``on_header(name, value)`` once per header with
  the whole name and value however the bytes were split between ``feed_data`` calls,
  ``on_headers_complete``, ``on_body(chunk)`` and ``on_message_complete``, once per message,
  an informational (1xx) answer being a message of its own; it knows that 204 and 304 answers
  have no body, but not a HEAD's (it is not told the method); a body delimited by the close
  never completes (httptools has no "end of input"); ``should_keep_alive()`` after the message
  is HTTP/1.1's rule (``Connection: close``, HTTP/1.0); an exception raised by a callback stops
  the parse, ``feed_data`` raising ``HttpParserCallbackError``; malformed input raises an
  ``HttpParserError``.
- **An asyncio transport's raw socket** (:func:`readable`). ``get_extra_info("socket")`` of a
  TCP transport, TLS over it included, answers an object whose ``fileno()`` is the socket's.
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

Why a transport of our own rather than httpx's (httpcore's pool over h11): see
:mod:`worker.client.http1`; in short, a third of the daemon's event loop went to httpcore's
locks, shields and per-read cancel scopes and to h11's parsing.
"""

from __future__ import annotations

import re
import select
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import httpx

if TYPE_CHECKING:
    from worker.client.http1 import Http1Transport

# The internals named above, spelled once (tests/compat reads them from here).
SOCKET = "socket"  # the extra info an asyncio transport answers with its raw socket
URI_REFERENCE = "_uri_reference"  # httpx.URL's parsed parts (a named tuple)


def readable(sock: Any) -> bool:
    """Whether reading ``sock`` would not block: data, or the peer's close, is waiting.

    httpcore's test of an idle connection before reusing it, kept: the event loop may not have
    read the server's close yet when the pool hands the connection out. A socket that is gone
    counts as readable, as in httpcore: its next read returns the end.
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


def pooled_transport(limits: httpx.Limits) -> Http1Transport:
    """The client's transport: :class:`worker.client.http1.Http1Transport` (HTTP/1.1, no proxy
    from the environment, httpx's default TLS context), pooled within ``limits``."""
    from worker.client.http1 import Http1Transport  # noqa: PLC0415 (it imports readable)

    return Http1Transport(limits)


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
    The transport raises httpx's errors, as httpx's own transport does.
    """
    response = await transport.handle_async_request(request)
    response.request = request
    try:
        await response.aread()
    except BaseException:
        await response.aclose()
        raise
    return response
