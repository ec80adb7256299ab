"""Client test fixtures: settings per profile, a scripted transport, a fake paged server."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import httpx
import orjson
from pydantic import SecretStr

from worker.client import ApiClient, ClientEvents, Pacer
from worker.client.auth import EntraTokens
from worker.client.testing import FakeClock
from worker.config import ApiSettings, Profile, RetrySettings

KEY = "sk-test-SECRET-0123456789"

Step = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


def azure(**overrides: Any) -> ApiSettings:
    values: dict[str, Any] = {"endpoint": "https://res.openai.azure.com", "api_key": SecretStr(KEY)}
    values.update(overrides)
    return ApiSettings(**values)


def settings_for(profile: Profile, **overrides: Any) -> ApiSettings:
    endpoints = {
        Profile.AZURE: "https://res.openai.azure.com",
        Profile.OPENAI: "https://api.openai.com",
        Profile.FOUNDRY: "https://hub.services.ai.azure.com",
    }
    values: dict[str, Any] = {"profile": profile, "endpoint": endpoints[profile]}
    if profile is Profile.FOUNDRY:
        values["project"] = "proj"
    return azure(**{**values, **overrides})


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


def message(message_id: str, thread_id: str = "thread_1") -> dict[str, Any]:
    """A message object with the fields the contract guarantees (the client checks them)."""
    return {
        "id": message_id,
        "object": "thread.message",
        "created_at": 1699016383,
        "thread_id": thread_id,
        "status": "completed",
        "role": "user",
        "content": [{"type": "text", "text": {"value": "hi", "annotations": []}}],
        "assistant_id": None,
        "run_id": None,
        "attachments": [],
        "metadata": {},
    }


MESSAGE = message("msg_1")


class RecordingEvents(ClientEvents):
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


def make_client(
    handler: Callable[[httpx.Request], httpx.Response],
    clock: FakeClock,
    api: ApiSettings | None = None,
    retry: RetrySettings | None = None,
    pacer: Pacer | None = None,
    events: ClientEvents | None = None,
    tokens: EntraTokens | None = None,
) -> ApiClient:
    return ApiClient(
        api or azure(),
        retry or RetrySettings(max_attempts=4, initial_delay=0.5, max_delay=8.0),
        transport=httpx.MockTransport(handler),
        pacer=pacer,
        events=events,
        rng=random.Random(7),
        sleep=clock.sleep,
        clock=clock.now,
        tokens=tokens,
    )


def list_slice(
    ids: list[str], *, order: str, after: str | None, before: str | None, limit: int
) -> tuple[list[str], bool]:
    """What a cursor-paged server returns: ``ids`` are oldest first; returns (page, has_more)."""
    seq = ids if order == "asc" else ids[::-1]
    if after is not None:
        rest = seq[seq.index(after) + 1 :]
        return rest[:limit], len(rest) > limit
    if before is not None:
        head = seq[: seq.index(before)]
        page = head[-limit:]
        return page, len(head) > limit
    return seq[:limit], len(seq) > limit


def page_body(page: list[str], has_more: bool, thread_id: str = "thread_1") -> dict[str, Any]:
    return {
        "object": "list",
        "data": [message(i, thread_id) for i in page],
        "first_id": page[0] if page else None,
        "last_id": page[-1] if page else None,
        "has_more": has_more,
    }
