"""URL, query and auth per profile, as the server sees them on the wire."""

from __future__ import annotations

import os
import uuid

import httpx
import pytest

from tests.client.conftest import KEY, MESSAGE, azure, make_client, settings_for
from worker.client import ApiClient, profiles
from worker.client.profiles import fill_route
from worker.config import ApiSettings, Profile
from worker.errors import ConfigError
from worker.testing import FakeClock, Script, ok


async def _one_request(api: ApiSettings) -> httpx.Request:
    script = Script(ok(MESSAGE))
    async with make_client(script, FakeClock(), api=api) as client:
        await client.get_message("thread_1", "msg_1")
    return script.requests[0]


@pytest.mark.anyio
async def test_azure_api_key_url_and_headers() -> None:
    """azure: /openai root, api-version on the query, the key in api-key and no bearer header."""
    request = await _one_request(azure())
    assert str(request.url) == (
        "https://res.openai.azure.com/openai/threads/thread_1/messages/msg_1"
        "?api-version=2024-08-01-preview"
    )
    assert request.headers["api-key"] == KEY
    assert "authorization" not in request.headers
    assert request.headers["user-agent"].startswith("threadsync/")
    uuid.UUID(request.headers["x-ms-client-request-id"])


@pytest.mark.anyio
async def test_azure_bearer_and_explicit_version() -> None:
    """azure, auth=bearer: Authorization and no api-key; api_version overrides the default."""
    request = await _one_request(azure(auth="bearer", api_version="2024-05-01-preview"))
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert "api-key" not in request.headers
    assert request.url.params["api-version"] == "2024-05-01-preview"


@pytest.mark.anyio
@pytest.mark.parametrize("endpoint", ["https://api.openai.com", "https://api.openai.com/v1/"])
async def test_openai_profile(endpoint: str) -> None:
    """openai: one /v1 (never doubled), bearer, the assistants=v2 beta header, no api-version."""
    request = await _one_request(settings_for(Profile.OPENAI, endpoint=endpoint))
    assert str(request.url) == "https://api.openai.com/v1/threads/thread_1/messages/msg_1"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["openai-beta"] == "assistants=v2"
    assert "api-key" not in request.headers


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("endpoint", "project"),
    [
        ("https://hub.services.ai.azure.com", "proj"),
        ("https://hub.services.ai.azure.com/api/projects/proj", None),
    ],
)
async def test_foundry_profile(endpoint: str, project: str | None) -> None:
    """foundry: the project path (given or already in the endpoint), 2025-05-01, bearer only."""
    api = settings_for(Profile.FOUNDRY, endpoint=endpoint, project=project)
    request = await _one_request(api)
    assert str(request.url) == (
        "https://hub.services.ai.azure.com/api/projects/proj/threads/thread_1/messages/msg_1"
        "?api-version=2025-05-01"
    )
    assert request.headers["authorization"] == f"Bearer {KEY}"


def test_foundry_refuses_api_key_auth() -> None:
    """foundry accepts Entra bearer tokens only: an explicit api-key auth is a ConfigError."""
    with pytest.raises(ConfigError, match="bearer"):
        ApiClient(settings_for(Profile.FOUNDRY, auth="api-key"))


def test_foundry_without_project_names_the_setting() -> None:
    """Foundry with no project (path or setting): the error names THREADSYNC_API__PROJECT."""
    with pytest.raises(ConfigError, match="THREADSYNC_API__PROJECT"):
        ApiClient(settings_for(Profile.FOUNDRY, project=None))


def test_missing_endpoint_names_the_variable() -> None:
    """No endpoint for azure: the error names AZURE_OPENAI_ENDPOINT."""
    with pytest.raises(ConfigError, match="AZURE_OPENAI_ENDPOINT"):
        ApiClient(azure(endpoint=None))


@pytest.mark.parametrize(
    ("profile", "variable"),
    [(Profile.AZURE, "AZURE_OPENAI_API_KEY"), (Profile.OPENAI, "OPENAI_API_KEY")],
)
def test_missing_key_names_the_variable(profile: Profile, variable: str) -> None:
    """No key: the error names the variable to set for that profile."""
    with pytest.raises(ConfigError, match=variable):
        ApiClient(settings_for(profile, api_key=None))


def test_fill_route_cannot_escape_the_path() -> None:
    """An id with slashes or a query mark is encoded whole: it cannot add segments or a query."""
    assert fill_route("/threads/{thread_id}", thread_id="../x?y=1") == "/threads/..%2Fx%3Fy%3D1"


def test_each_request_has_a_fresh_version_4_request_id() -> None:
    """Unique per request (the server's logs are searched by it), in the UUID form Azure takes."""
    ids = [profiles.request_headers()["x-ms-client-request-id"] for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    assert {uuid.UUID(i).version for i in ids} == {4}
    assert all(str(uuid.UUID(i)) == i for i in ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
def test_a_forked_child_draws_other_request_ids_than_its_parent() -> None:
    """The generator is seeded once per process: a child forked from it is reseeded, or it would
    send the ids its parent sends next."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, to the parent, and out without pytest's teardown
        try:
            os.write(write, profiles.request_headers()["x-ms-client-request-id"].encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode()
    assert os.waitpid(pid, 0)[1] == 0
    parent = profiles.request_headers()["x-ms-client-request-id"]
    assert uuid.UUID(child).version == 4
    assert child != parent
