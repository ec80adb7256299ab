"""What the client's request path assumes of httpx's and httptools' internals (named in
``worker/client/transport.py``), one test per assumption, named after it: an upgrade that breaks
one fails here first, and says which."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import socket
import weakref

import httptools
import httpx
import pytest

from worker.client import transport
from worker.client.http1 import Http1Transport
from worker.client.transport import (
    SOCKET,
    URI_REFERENCE,
    RequestBuilder,
    pooled_transport,
    readable,
    release,
    send,
)

pytestmark = pytest.mark.anyio


class Recorder:
    """A protocol for httptools' response parser that records each callback, in order, with
    ``should_keep_alive()`` as the parser answers it within ``on_message_complete``."""

    def __init__(self, stop_at: str = "") -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.events: list[object] = []
        self.stop_at = stop_at
        self.reason = b""

    def on_message_begin(self) -> None:
        self.events.append("begin")

    def on_status(self, reason: bytes) -> None:
        self.events.append(("status", self.parser.get_status_code(), reason))
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.events.append((name, value))

    def on_headers_complete(self) -> None:
        self.events.append("headers")
        if self.stop_at == "headers":
            raise RuntimeError("stop")

    def on_body(self, body: bytes) -> None:
        self.events.append(body)

    def on_message_complete(self) -> None:
        self.events.append(("complete", self.parser.should_keep_alive()))

    def feed(self, data: bytes, *, split: bool = False) -> list[object]:
        for part in [data[i : i + 1] for i in range(len(data))] if split else [data]:
            self.parser.feed_data(part)
        return self.events


def _bodies(events: list[object]) -> bytes:
    return b"".join(e for e in events if isinstance(e, bytes))


# -- httptools' response parser (http1.Connection) ----------------------------------------------


def test_httptools_calls_on_header_once_per_header_however_the_bytes_were_split() -> None:
    """Headers whole, once each; but the reason phrase (``on_status``) and the body come in as
    many pieces as the bytes did: the transport joins them."""
    data = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Id: r1\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    recorder = Recorder()
    split = recorder.feed(data, split=True)
    assert recorder.reason == b"OK"
    assert split.count(("status", 200, b"O")) == 1  # the first piece only
    headers = [e for e in split if isinstance(e, tuple) and isinstance(e[0], bytes)]
    assert headers == [
        (b"Content-Type", b"application/json"),
        (b"X-Id", b"r1"),
        (b"Content-Length", b"2"),
    ]
    assert split[0] == "begin"
    assert _bodies(split) == b"ok"
    assert split.count(b"o") == 1
    assert split[-1] == ("complete", True)


def test_httptools_parses_an_informational_answer_as_a_message_of_its_own() -> None:
    events = Recorder().feed(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx"
    )
    assert events == [
        "begin", ("status", 100, b"Continue"), "headers", ("complete", True),
        "begin", ("status", 201, b"Created"), (b"Content-Length", b"1"), "headers", b"x",
        ("complete", True),
    ]  # fmt: skip


@pytest.mark.parametrize("status", [204, 304])
def test_httptools_knows_204_and_304_have_no_body(status: int) -> None:
    """Even with a Content-Length: what follows is the next message, not this one's body."""
    events = Recorder().feed(
        b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
        % status
    )
    assert events.count("begin") == 2
    assert events[4] == ("complete", True)  # begin, status, Content-Length, headers
    assert _bodies(events) == b"x"


def test_httptools_reads_a_head_answers_content_length_as_a_body() -> None:
    """The parser is not told the request's method: a HEAD's answer would wait for a body
    that never comes, so the transport stops the parse at the headers itself."""
    events = Recorder().feed(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    assert events[-1] == "headers"  # not complete: 100 bytes of body awaited


def test_httptools_never_completes_a_body_delimited_by_the_close() -> None:
    """No length and not chunked: the body runs to the connection's end, which httptools
    cannot be told; the transport completes it when the connection is lost."""
    recorder = Recorder()
    events = recorder.feed(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
    assert _bodies(events) == b"until the end"
    assert not any(isinstance(e, tuple) and e[0] == "complete" for e in events)


@pytest.mark.parametrize(
    ("answer", "keep_alive"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n", True),
    ],
)
def test_httptools_should_keep_alive_within_on_message_complete_is_http11s_rule(
    answer: bytes, keep_alive: bool
) -> None:
    recorder = Recorder()
    assert recorder.feed(answer)[-1] == ("complete", keep_alive)
    # Asked after feed_data returned, it says False whatever the answer: ask it in the callback.
    assert recorder.parser.should_keep_alive() is False


def test_httptools_stops_the_parse_when_a_callback_raises() -> None:
    recorder = Recorder(stop_at="headers")
    with pytest.raises(httptools.HttpParserCallbackError):
        recorder.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert recorder.events[-1] == "headers"  # no body, no completion after the raise


@pytest.mark.parametrize(
    "garbage",
    [
        b"HTTX/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    ],
)
def test_httptools_raises_a_parser_error_on_a_malformed_answer(garbage: bytes) -> None:
    with pytest.raises(httptools.HttpParserError):
        Recorder().feed(garbage)


@pytest.mark.parametrize(
    "lax",
    [
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2 \r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
    ],
)
def test_httptools_leniencies_read_what_h11_reads(lax: bytes) -> None:
    """The three leniencies ``http1.Connection`` asks for: bare LF line ends, blanks after a
    chunk size, chunked winning over a Content-Length beside it. Refused without them."""
    with pytest.raises(httptools.HttpParserError):
        Recorder().feed(lax)
    recorder = Recorder()
    recorder.parser.set_dangerous_leniencies(
        lenient_chunked_length=True,
        lenient_optional_cr_before_lf=True,
        lenient_spaces_after_chunk_size=True,
    )
    events = recorder.feed(lax)
    assert _bodies(events) == b"ok"
    assert events[-1] == ("complete", True)


# -- an asyncio transport's raw socket (readable) -----------------------------------------------


async def test_asyncio_transport_answers_socket_with_its_raw_socket() -> None:
    """What :func:`readable` polls, and the answer it gives in each state."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        loop = asyncio.get_running_loop()
        connected, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        peer, _ = listener.accept()
        try:
            raw = connected.get_extra_info(SOCKET)
            assert raw.getpeername() == ("127.0.0.1", port)
            assert raw.fileno() >= 0
            assert not readable(raw)
            connected.pause_reading()  # the loop must not read the close first
            peer.close()
            await loop.run_in_executor(None, _until_readable, raw.fileno())
            assert readable(raw)
        finally:
            peer.close()
            connected.abort()


def _until_readable(fd: int) -> None:
    import select  # noqa: PLC0415

    select.select([fd], [], [])


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
    """Through the client's pooled transport, over loopback: the whole answer returns the
    connection to the pool (the next request reuses it), a gzip body is decoded when ``send``
    reads it (httpx decodes the raw body the transport's stream holds), and errors arrive as
    httpx's (the retry policy's)."""
    async with _Answering() as server, pooled_transport(httpx.Limits(max_connections=2)) as pool:
        for path in ("/a", "/b"):
            response = await send(pool, httpx.Request("GET", f"{server.url}{path}"))
            assert response.json() == {"ok": True}
            assert response.headers["content-encoding"] == "gzip"
            assert response.http_version == "HTTP/1.1"
            assert response.reason_phrase == "OK"
        assert server.connections == 1
        with pytest.raises(httpx.UnsupportedProtocol):
            await send(pool, httpx.Request("GET", "ftp://api.invalid/x"))


class _Answering:
    """HTTP/1.1 on loopback answering every request with a gzip ``{"ok": true}``."""

    def __init__(self) -> None:
        self.connections = 0
        self.url = ""

    async def __aenter__(self) -> _Answering:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        body = gzip.compress(b'{"ok": true}')
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(body), body)
                )
        writer.close()


def test_transport_and_http1_are_the_only_modules_touching_these_internals() -> None:
    """The seam holds: no other module of the package names httpx's URL internals or uses
    httptools or httpcore."""
    from pathlib import Path  # noqa: PLC0415

    package = Path(transport.__file__).parent.parent
    seam = {Path(transport.__file__), Path(transport.__file__).with_name("http1.py")}
    names = (URI_REFERENCE, "import httptools", "import httpcore", "from httpcore")
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path not in seam and any(n in path.read_text() for n in names)
    ]
    assert offenders == []
    assert isinstance(pooled_transport(httpx.Limits()), Http1Transport)
