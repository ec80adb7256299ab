"""Fixtures for the emulator tests: a fake-clock emulator, ASGI clients, the OpenAPI schemas."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from openapi_schema_validator import OAS30Validator

from worker.emulator import Emulator, ManualClock, create_app

KEY = "test-key"
AZURE_Q = {"api-version": "2024-08-01-preview"}
SPEC_NAME = "openai-openapi-2024-08-28-440c171.yaml"
VENDORED = Path(__file__).with_name("specs") / "openai-2024-08-28-message-schemas.json"
VENDORED_ROOTS = [
    "ListMessagesResponse",
    "MessageObject",
    "DeleteMessageResponse",
    "ErrorResponse",
    "ThreadObject",
    "DeleteThreadResponse",
]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_700_000_000.0)


@pytest.fixture
def emulator(clock: ManualClock) -> Emulator:
    return Emulator(api_key=KEY, clock=clock)


@pytest.fixture
async def client(emulator: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client sending the Azure key header by default."""
    transport = httpx.ASGITransport(app=create_app(emulator))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://emu", headers={"api-key": KEY}
    ) as http:
        yield http


def _specs_dir() -> Path | None:
    """The shared folder holding the full public OpenAPI documents, when this checkout has it."""
    env = os.environ.get("THREADSYNC_SPECS_DIR")
    candidates = [Path(env)] if env else []
    candidates += [p / "shared" / "specs" for p in Path(__file__).resolve().parents[2:4]]
    for candidate in candidates:
        if (candidate / SPEC_NAME).is_file():
            return candidate
    return None


def schema_closure(schemas: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """``names`` and every schema they reference, by name."""
    out: dict[str, Any] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                name = ref.rsplit("/", 1)[1]
                if name not in out:
                    out[name] = schemas[name]
                    walk(schemas[name])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for name in names:
        out[name] = schemas[name]
        walk(schemas[name])
    return dict(sorted(out.items()))


def _inline_refs(node: Any, schemas: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """Replace ``#/components/schemas/X`` refs by their (recursively inlined) targets."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            name = ref.rsplit("/", 1)[1]
            if name in seen:  # a cycle: leave this branch unconstrained
                return {}
            return _inline_refs(schemas[name], schemas, (*seen, name))
        return {k: _inline_refs(v, schemas, seen) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_refs(v, schemas, seen) for v in node]
    return node


@pytest.fixture(scope="session")
def schema_validator() -> Callable[[str, Any], None]:
    """``validate(schema_name, body)`` against the 2024-08-28 OpenAI spec's schemas.

    The schemas come from :data:`VENDORED` (committed, so CI validates on any clone); a test
    checks it against the full document whenever the shared specs folder is present.
    """
    schemas: dict[str, Any] = orjson.loads(VENDORED.read_bytes())["schemas"]
    cache: dict[str, Any] = {}

    def validate(name: str, body: Any) -> None:
        if name not in cache:
            cache[name] = OAS30Validator(_inline_refs(schemas[name], schemas))
        cache[name].validate(body)

    return validate
