"""Test mode: every fake threadsync's own suite uses, public so that yours can use them too.

Against the bundled emulator, in process (no socket)::

    emulator = Emulator(clock=ManualClock())
    async with emulated_client(emulator) as client:
        report = await sync_threads(client, mirror)

Retries never really sleep (the client's ``sleep`` is replaced by a recorder), and a connection the
emulator drops mid-body surfaces as the same ``httpx.ReadError`` a real socket would give.

Time: :class:`FakeClock` is virtual monotonic time whose ``sleep`` jumps instead of waiting (pass
``clock=fake.now, sleep=fake.sleep`` to :class:`ApiClient` or :class:`Pacer`, as stamina's test
mode does); :class:`ManualClock` is a wall clock that stands still until moved.

Scripted answers, without the emulator: :class:`Script` (an ``httpx.MockTransport`` handler
answering from a list of responses and exceptions, built with :func:`ok` and :func:`status`),
:class:`RecordingEvents` (what the client reported), :class:`StubFetcher` (Entra tokens).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import orjson
from pydantic import SecretStr

from worker.client import ApiClient, ClientEvents
from worker.client.auth import Token
from worker.config import ApiSettings, Profile, RetrySettings
from worker.emulator import DroppedConnection, Emulator, ManualClock, create_app
from worker.errors import CredentialError

__all__ = [
    "EmulatorTransport",
    "FakeClock",
    "ManualClock",
    "RecordingEvents",
    "Script",
    "SleepRecorder",
    "StubFetcher",
    "emulated_client",
    "ok",
    "status",
]


class EmulatorTransport(httpx.AsyncBaseTransport):
    """``httpx.ASGITransport`` over an emulator, translating dropped connections like a socket."""

    def __init__(self, emulator: Emulator) -> None:
        self._inner = httpx.ASGITransport(app=create_app(emulator))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await self._inner.handle_async_request(request)
            await response.aread()
        except DroppedConnection as exc:
            raise httpx.ReadError("connection dropped mid-body", request=request) from exc
        return response


class SleepRecorder:
    """A stand-in for ``anyio.sleep`` that returns at once and remembers what was asked."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@asynccontextmanager
async def emulated_client(
    emulator: Emulator,
    *,
    profile: Profile = Profile.AZURE,
    retry: RetrySettings | None = None,
    sleep: SleepRecorder | None = None,
    **api: Any,
) -> AsyncIterator[ApiClient]:
    """An :class:`ApiClient` talking to ``emulator`` in-process; ``api`` overrides settings
    (``endpoint="http://127.0.0.1:1/openai"``, ``api_version=...``, ``api_key=...``)."""
    values: dict[str, Any] = {
        "profile": profile,
        "endpoint": "http://127.0.0.1:1",
        "project": "demo" if profile is Profile.FOUNDRY else None,
        "api_key": SecretStr(emulator.api_key),
    }
    values.update(api)
    settings = ApiSettings(**values)
    async with ApiClient(
        settings,
        retry or RetrySettings(max_attempts=8),
        transport=EmulatorTransport(emulator),
        sleep=sleep or SleepRecorder(),
    ) as client:
        yield client


# -- time -----------------------------------------------------------------------------------------

# How many scheduler rounds the earliest sleeper waits before time jumps to it, so that tasks that
# are runnable right now get to reach their own sleep (which may wake earlier) first.
_SETTLE_ROUNDS = 3


class FakeClock:
    """Virtual time: sleepers wake in wake-time order and the clock jumps to each wake time.

    Concurrent sleepers behave as on a real clock (two tasks sleeping 1 s from the same instant
    both wake at +1 s), which is what pacing tests need. ``sleeps`` records every requested wait.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.time = start
        self.sleeps: list[float] = []
        self._waiters: list[tuple[float, int]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self.time

    def advance(self, seconds: float) -> None:
        """Move time forward by hand (for tests of code that only reads the clock)."""
        self.time += max(0.0, seconds)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        entry = (self.time + max(0.0, seconds), next(self._order))
        heapq.heappush(self._waiters, entry)
        rounds = 0
        try:
            while True:
                # A real sleep is a checkpoint: let every other task run (and maybe go to sleep).
                await anyio.lowlevel.checkpoint()
                rounds = rounds + 1 if self._waiters[0] == entry else 0
                if rounds >= _SETTLE_ROUNDS:
                    break
        except BaseException:
            # Cancelled: forget this sleeper so it cannot hold back the ones behind it.
            self._waiters.remove(entry)
            heapq.heapify(self._waiters)
            raise
        heapq.heappop(self._waiters)
        self.time = max(self.time, entry[0])


# -- scripted answers -----------------------------------------------------------------------------

Step = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class Script:
    """A MockTransport handler answering from a list of steps; records every request."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        if isinstance(step, httpx.Response):
            return step
        return step(request)


def ok(body: Any, **headers: str) -> httpx.Response:
    return httpx.Response(200, content=orjson.dumps(body), headers=headers)


def status(code: int, body: Any = None, **headers: str) -> httpx.Response:
    content = orjson.dumps(body) if body is not None else b""
    return httpx.Response(code, content=content, headers=headers)


class RecordingEvents(ClientEvents):
    """The client's responses, retries and 429 pauses, in order."""

    def __init__(self) -> None:
        self.responses: list[tuple[str, str, int | None]] = []
        self.retries: list[tuple[str, int | None, float]] = []
        self.throttled: list[float] = []

    def on_response(self, method: str, route: str, status: int | None, seconds: float) -> None:
        self.responses.append((method, route, status))

    def on_retry(self, route: str, status: int | None, wait: float) -> None:
        self.retries.append((route, status, wait))

    def on_throttled(self, wait: float) -> None:
        self.throttled.append(wait)


class StubFetcher:
    """A token source for ``EntraTokens``: tokens ``tok-1``, ``tok-2``... living ``lifetime``
    seconds on ``clock``; set ``fail`` to make fetches fail, ``gate`` to hold them."""

    description = "api.credential=stub"
    scope = "https://ai.azure.com/.default"

    def __init__(
        self, clock: Callable[[], float], lifetime: float = 3600.0, prefix: str = "tok-"
    ) -> None:
        self.clock = clock
        self.prefix = prefix
        self.lifetime = lifetime
        self.refresh_in: float | None = None
        self.calls = 0
        self.fail: CredentialError | None = None
        self.gate: anyio.Event | None = None
        self.closed = False
        self._ids = itertools.count(1)

    async def fetch(self) -> Token:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        now = self.clock()
        refresh_on = now + self.refresh_in if self.refresh_in is not None else None
        return Token(f"{self.prefix}{next(self._ids)}", now + self.lifetime, refresh_on)

    async def aclose(self) -> None:
        self.closed = True
