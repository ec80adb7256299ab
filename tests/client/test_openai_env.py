"""The openai profile as the openai SDK reads it: OPENAI_API_KEY, OPENAI_BASE_URL, OPENAI_ORG_ID,
OPENAI_PROJECT_ID; and Azure's v1 endpoint through the openai profile."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.client.conftest import MESSAGE, make_client
from worker.client import ApiClient
from worker.config import Profile, load_settings
from worker.emulator import Emulator, create_app
from worker.emulator.asgi import ASGIApp, Receive, Scope, Send
from worker.testing import FakeClock, Script, SleepRecorder, ok

SDK_VARS = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "OPENAI_API_VERSION",
    "AZURE_OPENAI_API_KEY",
    "AZURE_OPENAI_ENDPOINT",
    "THREADSYNC_CONFIG",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SDK_VARS:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("THREADSYNC_"):
            monkeypatch.delenv(name)


def both_families(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shell holding both SDKs' variables, as many do."""
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-key-0000")
    monkeypatch.setenv("OPENAI_BASE_URL", "https://proxy.example.com/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-0000")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-abc")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj_xyz")


def test_openai_profile_reads_the_openai_sdk_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    both_families(monkeypatch)
    monkeypatch.setenv("THREADSYNC_API__PROFILE", "openai")
    api = load_settings().api
    assert api.endpoint == "https://proxy.example.com/v1"
    assert api.secret() is not None
    assert api.secret().get_secret_value() == "sk-openai-0000"  # type: ignore[union-attr]
    assert (api.organization, api.openai_project) == ("org-abc", "proj_xyz")


def test_the_profile_from_the_config_file_picks_the_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    both_families(monkeypatch)
    config = tmp_path / "threadsync.toml"
    config.write_text('[api]\nprofile = "openai"\n')
    api = load_settings(config).api
    assert api.endpoint == "https://proxy.example.com/v1"
    assert api.secret().get_secret_value() == "sk-openai-0000"  # type: ignore[union-attr]


def test_azure_profile_reads_the_azure_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    both_families(monkeypatch)
    api = load_settings().api
    assert api.endpoint == "https://res.openai.azure.com"
    assert api.secret().get_secret_value() == "azure-key-0000"  # type: ignore[union-attr]
    assert api.organization is None  # OpenAI-Organization means nothing to Azure


def test_explicit_settings_beat_the_sdk_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    both_families(monkeypatch)
    monkeypatch.setenv("THREADSYNC_API__PROFILE", "openai")
    monkeypatch.setenv("THREADSYNC_API__ORGANIZATION", "org-explicit")
    assert load_settings().api.organization == "org-explicit"


class Recording:
    """An ASGI wrapper remembering the headers of every API request the emulator receives."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers: list[dict[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await self.app(scope, receive, send)


@pytest.mark.anyio
async def test_organization_and_project_headers_reach_the_emulator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator = Emulator()
    thread = emulator.seed(threads=1, messages=2)[0]
    monkeypatch.setenv("THREADSYNC_API__PROFILE", "openai")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    monkeypatch.setenv("OPENAI_API_KEY", emulator.api_key)
    monkeypatch.setenv("OPENAI_ORG_ID", "org-abc")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj_xyz")
    app = Recording(create_app(emulator))
    async with ApiClient(
        load_settings().api, transport=httpx.ASGITransport(app=app), sleep=SleepRecorder()
    ) as client:
        assert len((await client.list_messages(thread)).data) == 2
    seen = app.headers[-1]
    assert seen["openai-organization"] == "org-abc"
    assert seen["openai-project"] == "proj_xyz"
    assert seen["authorization"] == f"Bearer {emulator.api_key}"


async def _one_request(api: Any) -> httpx.Request:
    script = Script(ok(MESSAGE))
    async with make_client(script, FakeClock(), api=api) as client:
        await client.get_message("thread_1", "msg_1")
    return script.requests[0]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "endpoint",
    ["https://res.openai.azure.com/openai/v1/", "https://res.openai.azure.com/openai/v1"],
)
async def test_azure_v1_endpoint_through_the_openai_profile(
    monkeypatch: pytest.MonkeyPatch, endpoint: str
) -> None:
    monkeypatch.setenv("THREADSYNC_API__PROFILE", "openai")
    monkeypatch.setenv("OPENAI_BASE_URL", endpoint)
    monkeypatch.setenv("OPENAI_API_KEY", "azure-key-0000")
    api = load_settings().api
    assert api.profile is Profile.OPENAI
    request = await _one_request(api)
    assert (
        str(request.url) == "https://res.openai.azure.com/openai/v1/threads/thread_1/messages/msg_1"
    )
    assert request.headers["authorization"] == "Bearer azure-key-0000"
    assert "openai-organization" not in request.headers


@pytest.mark.anyio
async def test_azure_v1_endpoint_against_the_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    emulator = Emulator()
    thread = emulator.seed(threads=1, messages=3)[0]
    monkeypatch.setenv("THREADSYNC_API__PROFILE", "openai")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/openai/v1/")
    monkeypatch.setenv("OPENAI_API_KEY", emulator.api_key)
    app = Recording(create_app(emulator))
    async with ApiClient(
        load_settings().api, transport=httpx.ASGITransport(app=app), sleep=SleepRecorder()
    ) as client:
        assert len((await client.list_messages(thread)).data) == 3
    assert "GET /openai/v1/threads/{thread_id}/messages" in emulator.stats()["routes"]
