"""The pool's test of an idle connection: one the server closed is not reused, even when the event
loop has not read the close yet (see worker/client/transport.py, worker/client/http1.py)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import anyio
import httpx
import pytest

from worker.client.http1 import Http1Transport
from worker.client.transport import pooled_transport, readable

pytestmark = pytest.mark.anyio


def test_readable_is_data_or_the_peers_close() -> None:
    left, right = socket.socketpair()
    with left, right:
        assert not readable(left)
        right.sendall(b"x")
        assert readable(left)
        left.recv(1)
        assert not readable(left)
        right.close()
        assert readable(left)  # the close is waiting: the next read returns the end
    assert readable(left)  # a closed socket (no descriptor) counts as readable
    assert readable(None)


class OneAnswerServer:
    """HTTP/1.1 on loopback that answers each connection once, then closes it (without saying
    so in a ``Connection: close`` header), as a server whose keep-alive ran out does."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.connections = 0
        self.closed = threading.Semaphore(0)
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                self.connections += 1
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                body = b'{"ok": true}'
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
            self.closed.release()


@pytest.fixture
def server() -> Iterator[OneAnswerServer]:
    srv = OneAnswerServer()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.listener.close()


async def test_an_idle_connection_the_server_closed_is_not_reused(
    server: OneAnswerServer,
) -> None:
    transport = pooled_transport(httpx.Limits(max_connections=4, max_keepalive_connections=4))
    assert isinstance(transport, Http1Transport)
    async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
        for _ in range(3):
            response = await client.get("/ping")
            assert response.json() == {"ok": True}
            # The server has closed that connection by now: the pool must see it and connect
            # again, instead of sending the next request into a closed socket.
            await anyio.to_thread.run_sync(server.closed.acquire)
    assert server.connections == 3
