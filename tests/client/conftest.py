"""Client test fixtures: settings per profile, a client on a scripted transport, a fake paged
server. The fakes themselves (``Script``, ``RecordingEvents``, ``FakeClock``) are in
:mod:`worker.testing`."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import SecretStr

from worker.client import ApiClient, ClientEvents, Pacer
from worker.client.auth import EntraTokens
from worker.config import ApiSettings, Profile, RetrySettings
from worker.testing import FakeClock

KEY = "sk-test-SECRET-0123456789"


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
