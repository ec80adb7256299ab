"""Serving an ASGI app with uvicorn: the one place threadsync overrides uvicorn's server.

Two apps are served: the emulator (``worker.emulator.server``, in the foreground or from a test's
thread) and the daemon's health listener (``worker.daemon.health``, on the daemon's own loop).
Both need to know when the socket listens, and the daemon must keep its own signal handlers.
uvicorn has no public hook for either, so :class:`Server` overrides two of ``uvicorn.Server``'s
methods, here and nowhere else (README "Third-party internals";
``tests/compat/test_serving.py`` asserts each assumption by name):

- ``serve(sockets)`` runs inside ``self.capture_signals()``, a context manager that installs
  uvicorn's SIGINT/SIGTERM handlers (from the main thread only) and restores them on exit; one
  that only yields leaves the process's handlers in place.
- ``startup(sockets)`` returns once the server listens, before ``serve`` enters its main loop.
- Setting ``should_exit`` ends ``serve`` at the main loop's next tick (a tenth of a second).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator

import uvicorn


class Server(uvicorn.Server):
    """uvicorn's server, saying when it listens, and stopped by :meth:`stop`.

    ``on_listening`` is called from the server's loop once its sockets listen. ``take_signals``
    False leaves SIGINT and SIGTERM to the process that owns them (the daemon's lifecycle);
    True lets uvicorn stop on them, as ``uvicorn.run`` does (the emulator's foreground).
    """

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        on_listening: Callable[[], object] | None = None,
        take_signals: bool = True,
    ) -> None:
        super().__init__(config)
        self._on_listening = on_listening
        self._take_signals = take_signals

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if not self._take_signals:
            yield
            return
        with super().capture_signals():
            yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self._on_listening is not None:
            self._on_listening()

    def stop(self) -> None:
        """Ask :meth:`serve` (or ``run``) to finish: open connections close, then it returns."""
        self.should_exit = True
