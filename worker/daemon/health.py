"""The optional HTTP listener: ``/healthz``, ``/readyz``, ``/metrics``.

A bare ASGI callable (three fixed routes need no framework) served by uvicorn on the daemon's own
event loop (through ``worker.serving``, which leaves the signals to the daemon). The probes answer
from state held in memory (the last heartbeat written, the last dispatcher run) and ``/metrics``
renders the registry; none of them touches the database, so a slow mirror cannot make a scrape
block the loop.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

import anyio
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST

from worker.serving import Server

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Probes(Protocol):
    def liveness(self) -> str | None:
        """None when alive, else why not."""

    def readiness(self) -> str | None:
        """None when ready, else why not."""

    def metrics_text(self) -> bytes: ...


def create_health_app(probes: Probes) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method not in ("GET", "HEAD"):
            await _send(send, 405, b"method not allowed\n")
        elif path == "/healthz":
            await _probe(send, probes.liveness())
        elif path == "/readyz":
            await _probe(send, probes.readiness())
        elif path == "/metrics":
            await _send(send, 200, probes.metrics_text(), CONTENT_TYPE_LATEST)
        else:
            await _send(send, 404, b"not found: try /healthz, /readyz or /metrics\n")

    return app


async def _probe(send: Send, reason: str | None) -> None:
    if reason is None:
        await _send(send, 200, b"ok\n")
    else:
        await _send(send, 503, reason.encode() + b"\n")


async def _send(
    send: Send, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class HealthServer:
    """Bind at once (a taken port fails start-up, not later), serve until :meth:`stop`."""

    def __init__(self, probes: Probes, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            create_health_app(probes),
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._listening = anyio.Event()
        # The daemon's lifecycle handles SIGTERM/SIGINT: uvicorn must not take them over.
        self._server = Server(config, on_listening=self._listening.set, take_signals=False)

    async def serve(self) -> None:
        try:
            await self._server.serve(sockets=[self._sock])
        finally:
            self._sock.close()

    async def wait_listening(self) -> None:
        await self._listening.wait()

    def stop(self) -> None:
        self._server.stop()
