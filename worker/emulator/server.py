"""Serving the emulator with uvicorn: in the foreground (the CLI) or in a thread (tests).

uvicorn (and ``worker.serving``, the one seam that overrides its server) is imported when a server
starts, not when the package is imported: every `threadsync` command imports the emulator package
(its behaviour names appear in `--help`), and only one of them serves.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from worker.emulator.asgi import ASGIApp, create_app
from worker.emulator.state import Emulator

if TYPE_CHECKING:
    import uvicorn

    from worker.serving import Server


def _config(emulator: Emulator, log_level: str, app: ASGIApp | None = None) -> uvicorn.Config:
    import uvicorn  # noqa: PLC0415 - see the module docstring

    return uvicorn.Config(
        app or create_app(emulator),
        lifespan="on",
        log_level=log_level,
        access_log=False,
        http="httptools",
        loop="uvloop",
        timeout_keep_alive=30,
    )


def _server(config: uvicorn.Config, on_listening: Callable[[], object] | None = None) -> Server:
    """uvicorn's server through the one seam that overrides it (it keeps uvicorn's signals)."""
    from worker.serving import Server  # noqa: PLC0415 - see the module docstring

    return Server(config, on_listening=on_listening)


def serve(emulator: Emulator, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve in the foreground until interrupted (SIGINT/SIGTERM)."""
    config = _config(emulator, "info")
    config.host, config.port = host, port
    _server(config).run()


@contextlib.contextmanager
def serve_in_thread(
    emulator: Emulator,
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    log_level: str = "warning",
    app: ASGIApp | None = None,
) -> Iterator[str]:
    """Serve on a loopback port from a background thread; yields the base URL.

    ``port=0`` picks a free port. Leaving the block stops the server and joins the thread.
    ``app`` serves a wrapper of ``create_app(emulator)`` instead (e.g. one recording bodies).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    ready = threading.Event()  # set when the server listens: an event instead of polling
    server = _server(_config(emulator, log_level, app), ready.set)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="emulator", daemon=True
    )
    thread.start()
    try:
        if not ready.wait(timeout=30):
            raise RuntimeError("the emulator did not start within 30 s")
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.stop()
        thread.join(timeout=30)
        sock.close()
