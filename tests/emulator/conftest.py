"""Fixtures for the emulator tests: a fake-clock emulator, ASGI clients, the OpenAPI schemas."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openapi_schema_validator import OAS30Validator

from worker.emulator import Emulator, ManualClock, create_app

KEY = "test-key"
AZURE_Q = {"api-version": "2024-08-01-preview"}
SPEC_NAME = "openai-openapi-2024-08-28-440c171.yaml"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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
    env = os.environ.get("THREADSYNC_SPECS_DIR")
    candidates = [Path(env)] if env else []
    candidates += [p / "shared" / "specs" for p in Path(__file__).resolve().parents[2:4]]
    for candidate in candidates:
        if (candidate / SPEC_NAME).is_file():
            return candidate
    return None


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
    """``validate(schema_name, body)`` against the 2024-08-28 OpenAI spec (loaded once)."""
    specs = _specs_dir()
    if specs is None:
        pytest.skip(f"{SPEC_NAME} not found (set THREADSYNC_SPECS_DIR to the shared/specs folder)")
    document = yaml.safe_load((specs / SPEC_NAME).read_text(encoding="utf-8"))
    schemas: dict[str, Any] = document["components"]["schemas"]
    cache: dict[str, Any] = {}

    def validate(name: str, body: Any) -> None:
        if name not in cache:
            cache[name] = OAS30Validator(_inline_refs(schemas[name], schemas))
        cache[name].validate(body)

    return validate
