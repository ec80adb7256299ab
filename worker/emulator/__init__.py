"""The Assistants messages API emulator: faithful for the official SDK, mischievous on demand.

Public API:

- :class:`Emulator`: the in-memory state and every control operation, usable from Python tests.
- :class:`Behaviour`: the switches for what the real service leaves unknown.
- :class:`FaultRule`, :class:`Faults`, :class:`RateLimit`: failures on demand.
- :func:`create_app`: the ASGI application (in-process via ``httpx.ASGITransport``).
- :func:`serve_in_thread`: a real loopback server for tests that need sockets.
- :class:`EmulatorControl`: an async client of the ``/_emulator`` control plane.
"""

from __future__ import annotations

from worker.emulator.asgi import DroppedConnection, create_app
from worker.emulator.behaviour import Behaviour
from worker.emulator.client import EmulatorControl
from worker.emulator.faults import FaultRule, Faults, RateLimit
from worker.emulator.server import serve, serve_in_thread
from worker.emulator.state import DEFAULT_API_KEY, Emulator, ManualClock
from worker.emulator.wire import WireError

__all__ = [
    "DEFAULT_API_KEY",
    "Behaviour",
    "DroppedConnection",
    "Emulator",
    "EmulatorControl",
    "FaultRule",
    "Faults",
    "ManualClock",
    "RateLimit",
    "WireError",
    "create_app",
    "serve",
    "serve_in_thread",
]
