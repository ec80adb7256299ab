"""What ``worker/serving.py`` assumes of ``uvicorn.Server``, one test per assumption, named after
it: an upgrade that breaks one fails here first, and says which."""

from __future__ import annotations

import contextlib
import inspect
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn

import worker
from worker import serving
from worker.serving import Server

pytestmark = pytest.mark.anyio

SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
) -> None:
    """Serves nothing: these tests are about the server around it."""


def config() -> uvicorn.Config:
    return uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)


@pytest.fixture
def bound() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    with sock:
        yield sock


def handlers() -> dict[int, Any]:
    return {sig: signal.getsignal(sig) for sig in SIGNALS}


def listens(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


class Recorded(uvicorn.Server):
    """uvicorn's own server, noting the order in which ``serve`` calls what serving.py
    overrides, and stopping through ``should_exit`` once it listens."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(config())
        self.sock = sock
        self.steps: list[str] = []

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            self.steps.append(
                f"signals taken: {handlers() == dict.fromkeys(SIGNALS, self.handle_exit)}"
            )
            yield
        self.steps.append("signals given back")

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.steps.append(f"startup, listening: {listens(self.sock)}")
        await super().startup(sockets)
        self.steps.append(f"started, listening: {listens(self.sock)}")
        self.should_exit = True


def test_uvicorn_server_capture_signals_takes_and_gives_back_sigint_and_sigterm() -> None:
    server = uvicorn.Server(config())
    before = handlers()
    with server.capture_signals():
        assert handlers() == dict.fromkeys(SIGNALS, server.handle_exit)
    assert handlers() == before


def test_uvicorn_server_methods_serving_overrides_have_their_signatures() -> None:
    """``startup(sockets)`` as :class:`Server` overrides it, ``capture_signals()`` with no
    argument, ``serve``/``run`` taking the sockets, ``should_exit`` a plain attribute."""
    assert list(inspect.signature(uvicorn.Server.startup).parameters) == ["self", "sockets"]
    assert list(inspect.signature(uvicorn.Server.capture_signals).parameters) == ["self"]
    assert list(inspect.signature(uvicorn.Server.serve).parameters) == ["self", "sockets"]
    assert list(inspect.signature(uvicorn.Server.run).parameters) == ["self", "sockets"]
    assert uvicorn.Server(config()).should_exit is False


async def test_uvicorn_server_serve_calls_startup_inside_capture_signals(
    bound: socket.socket,
) -> None:
    """``serve`` takes the signals, then starts up (listening once ``startup`` returns, not
    before), then, ``should_exit`` set, stops and gives the signals back."""
    before = handlers()
    server = Recorded(bound)
    await server.serve(sockets=[bound])
    assert server.steps == [
        "signals taken: True",
        "startup, listening: False",
        "started, listening: True",
        "signals given back",
    ]
    assert handlers() == before


async def test_uvicorn_server_should_exit_ends_serve(bound: socket.socket) -> None:
    """Set from outside once it listens, ``should_exit`` makes ``serve`` return."""
    listening = anyio.Event()
    server = Server(config(), on_listening=listening.set)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [bound])
        await listening.wait()
        assert listens(bound)
        server.stop()
    assert server.should_exit


async def test_uvicorn_server_serve_leaves_signals_when_capture_signals_only_yields(
    bound: socket.socket,
) -> None:
    """The daemon's case: with ``take_signals=False`` the process's handlers stay in place
    while uvicorn serves."""
    before = handlers()
    during: list[dict[int, Any]] = []
    server: Server

    def check() -> None:
        during.append(handlers())
        server.stop()

    server = Server(config(), on_listening=check, take_signals=False)
    await server.serve(sockets=[bound])
    assert during == [before]


def test_serving_is_the_only_module_overriding_uvicorn_server() -> None:
    """The seam holds: nothing else in the package subclasses or patches uvicorn's server."""
    package = Path(worker.__file__).parent
    seam = Path(serving.__file__)
    names = ("uvicorn.Server", "capture_signals", "should_exit", ".startup =")
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path != seam and any(name in path.read_text() for name in names)
    ]
    assert offenders == []
