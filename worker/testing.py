"""Test mode: threadsync wired to the bundled emulator in-process, for our suites and yours.

    emulator = Emulator(clock=ManualClock())
    async with emulated_client(emulator) as client:
        report = await sync_threads(client, mirror)

Retries never really sleep (the client's ``sleep`` is replaced by a recorder), and a connection the
emulator drops mid-body surfaces as the same ``httpx.ReadError`` a real socket would give.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from pydantic import SecretStr

from worker.client import ApiClient
from worker.config import ApiSettings, Profile, RetrySettings
from worker.emulator import DroppedConnection, Emulator, create_app


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
