"""The network backend under the client's connection pool: httpcore's anyio one, with a cheap
answer to "has the server closed this idle connection?".

httpcore's pool asks that of every idle connection each time it hands out or takes back one: about
sixteen times per request with eight connections (a 100,000-message first sync, bench_sync, asked
it 15,900 times for 1,000 requests). Its anyio stream answers by building anyio's whole table of
socket attributes to find the raw socket, a ``getpeername`` system call included, before it polls
the socket: about a tenth of the event loop's time per request went there. Here the raw socket is
looked up once per connection; the question itself (a zero-timeout poll) is asked as before.
"""

# The method signatures are httpcore's interface, ``timeout`` parameters included.
# ruff: noqa: ASYNC109

from __future__ import annotations

import select
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

# httpcore's socket option type (as its backends declare it).
SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


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
        self._socket: socket.socket | None = inner.get_extra_info("socket")

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
        if info == "is_readable":
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
    pool = getattr(transport, "_pool", None)
    if isinstance(pool, httpcore.AsyncConnectionPool) and hasattr(pool, "_network_backend"):
        pool._network_backend = Backend()
    return transport
