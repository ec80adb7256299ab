"""A Foundry migration target with Entra tokens for real: azure-identity's ManagedIdentityCredential
fetches them from the target emulator's managed-identity endpoint (``--entra foundry``: the
Conversations routes take issued tokens and refuse the key), a token expiring mid-migration costs
no batch, and a missing extra or variable is one line and exit 2."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import httpx
import orjson
import pytest
from pydantic import SecretStr

from tests.harness import KEY, run, use_managed_identity, user_env
from worker.client.auth import EntraTokens
from worker.client.entra import CredentialChoice, fetcher_of
from worker.config import CredentialKind
from worker.emulator import Emulator, ManualClock, serve_in_thread
from worker.emulator.identity import Identity
from worker.errors import AuthError, ConfigError
from worker.migrate import ledger
from worker.migrate.mapping import Policy
from worker.migrate.run import MigrateReport, Migration
from worker.migrate.settings import TargetCredential, TargetSettings
from worker.migrate.target import ConversationsClient, target_key
from worker.store.db import Mirror

from .conftest import expected_items, items_in, sync_source

pytestmark = pytest.mark.anyio

HEADER = "migrate-identity-header"
LIFETIME = 600.0
SIZES = (3, 45, 21)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(time.time())


@pytest.fixture
def target(clock: ManualClock) -> Emulator:
    identity = Identity(lifetime=LIFETIME, header=HEADER, entra="foundry")
    return Emulator(api_key="target-key", seed=8, clock=clock, identity=identity)


@pytest.fixture
def served(target: Emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with serve_in_thread(target) as base_url:
        use_managed_identity(monkeypatch, base_url, HEADER)
        yield base_url


def entra_target(base_url: str, **overrides: Any) -> TargetSettings:
    values: dict[str, Any] = {
        "profile": "foundry",
        "endpoint": base_url,
        "project": "proj",
        "auth": "entra",
        "credential": "managed-identity",
    }
    values.update(overrides)
    return TargetSettings(**values)


class Ageing(httpx.AsyncBaseTransport):
    """Real HTTP; each confirmed POST moves the target's clock on by ``step`` seconds, so that
    tokens expire in the middle of the migration, at known requests."""

    def __init__(self, clock: ManualClock, step: float) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.clock = clock
        self.step = step

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and response.status_code == 200:
            self.clock.advance(self.step)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def migrate_to(mirror: Mirror, client: ConversationsClient, key: str) -> MigrateReport:
    return await Migration(mirror, key, client, Policy(), concurrency=3).run(None, None)


async def mirrored(mirror: Mirror) -> list[str]:
    source = Emulator(seed=2)
    ids = [source.seed(seed=40 + i, threads=1, messages=n)[0] for i, n in enumerate(SIZES)]
    await sync_source(source, mirror, ids)
    return ids


def assert_migrated(
    mirror: Mirror, target: Emulator, settings: TargetSettings, ids: list[str]
) -> None:
    rows = {r.thread_id: r for r in ledger.rows(mirror, target_key(settings))}
    for thread_id, size in zip(ids, SIZES, strict=True):
        row = rows[thread_id]
        assert (row.state, row.items, row.last_error) == ("migrated", size, None)
        assert row.conversation_id is not None
        assert items_in(target, row.conversation_id) == expected_items(mirror, thread_id)
    assert len(target.conversations.by_id) == len(ids)


async def test_a_foundry_target_takes_managed_identity_tokens_and_no_key(
    mirror: Mirror, target: Emulator, served: str
) -> None:
    ids = await mirrored(mirror)
    settings = entra_target(served)
    async with ConversationsClient(settings) as client:
        assert client.tokens is not None
        assert client.tokens.description == "migrate.target.credential=managed-identity"
        report = await migrate_to(mirror, client, target_key(settings))
    assert not report.failed
    assert_migrated(mirror, target, settings, ids)
    assert target.identity.issued == 1  # one token served the whole migration
    assert target.identity.rejected == 0
    token = next(iter(target.identity.tokens))
    assert all(token not in str(c.metadata) for c in target.conversations.by_id.values())

    # The same target refuses its key where it takes tokens only (as the messages routes do).
    keyed = TargetSettings(
        profile="foundry", endpoint=served, project="proj", api_key=SecretStr(target.api_key)
    )
    async with ConversationsClient(keyed) as client:
        with pytest.raises(AuthError, match=r"HTTP 401: Unauthorized\. Access token is"):
            await client.create_conversation([], {})


@pytest.mark.parametrize("seen_by", ["client", "server only"])
async def test_a_token_expiring_mid_migration_costs_no_batch(
    mirror: Mirror, target: Emulator, served: str, clock: ManualClock, seen_by: str
) -> None:
    """``client``: the client sees time pass and renews ahead of expiry (no 401).
    ``server only``: the client's clock stands still, so its token expires unseen: each expiry
    is one 401, one renewal and the same request once more."""
    ids = await mirrored(mirror)
    settings = entra_target(served)
    # Each confirmed POST ages the token: tokens expire mid-migration. The client renews 5 min
    # ahead; 3 requests in flight at 0.15 of a life each never outrun that.
    step = LIFETIME * (0.15 if seen_by == "client" else 0.45)
    transport = Ageing(clock, step)
    client_clock = clock if seen_by == "client" else ManualClock(clock.now)
    fetcher = fetcher_of(CredentialChoice("managed-identity"), settings.entra_scope)
    tokens = EntraTokens(fetcher, clock=client_clock)
    async with ConversationsClient(settings, tokens=tokens, transport=transport) as client:
        report = await migrate_to(mirror, client, target_key(settings))
    assert not report.failed
    assert sum(t.settled for t in report.threads) == 0  # no batch had an unknown outcome
    assert_migrated(mirror, target, settings, ids)
    assert sum(t.requests for t in report.threads) == 3 + 2 + 1  # no POST was sent twice
    assert target.identity.issued >= 2  # the first token expired mid-way and was renewed
    if seen_by == "client":
        assert target.identity.rejected == 0
    else:  # every renewal was forced by a 401 (requests in flight may share one)
        assert target.identity.rejected >= target.identity.issued - 1


def one_line(stderr: str) -> str:
    """The one message a configuration error prints (JSON logs when stderr is no terminal)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    event = orjson.loads(lines[0])
    assert event["level"] == "error"
    return str(event["message"])


def test_missing_extra_and_missing_variables_are_one_line_and_exit_2(tmp_path: Path) -> None:
    env = user_env("http://127.0.0.1:9", tmp_path / "m.db")
    env.update(
        THREADSYNC_MIGRATE__TARGET__PROFILE="foundry",
        THREADSYNC_MIGRATE__TARGET__ENDPOINT="https://res.services.ai.azure.com",
        THREADSYNC_MIGRATE__TARGET__PROJECT="p",
        THREADSYNC_MIGRATE__TARGET__AUTH="entra",
        THREADSYNC_MIGRATE__TARGET__CREDENTIAL="client-secret",
    )
    proc = run(["migrate"], env, tmp_path, check=False)
    assert proc.returncode == 2
    assert one_line(proc.stderr) == (
        "migrate.target.credential=client-secret needs AZURE_TENANT_ID, AZURE_CLIENT_ID,"
        " AZURE_CLIENT_SECRET in the environment; set them, or choose another"
        " THREADSYNC_MIGRATE__TARGET__CREDENTIAL"
    )
    assert "Traceback" not in proc.stderr

    # azure-identity not installed: a stub package that fails to import stands in for it.
    stub = tmp_path / "stub" / "azure" / "identity"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError(\"No module named 'azure.identity'\")\n")
    env["PYTHONPATH"] = str(tmp_path / "stub")
    env["THREADSYNC_MIGRATE__TARGET__CREDENTIAL"] = "managed-identity"
    proc = run(["migrate"], env, tmp_path, check=False)
    assert proc.returncode == 2
    assert one_line(proc.stderr) == (
        "migrate.target.auth=entra needs azure-identity, which is not installed:"
        " pip install 'threadsync[azure]'"
    )
    assert "Traceback" not in proc.stderr
    assert KEY not in proc.stderr


def test_entra_is_refused_for_the_openai_target() -> None:
    settings = TargetSettings(auth="entra")
    with pytest.raises(ConfigError, match=r"api\.openai\.com\) takes API keys only"):
        ConversationsClient(settings)


def test_the_target_credential_choices_are_api_credentials() -> None:
    assert get_args(TargetCredential) == get_args(CredentialKind)


async def test_a_token_for_the_wrong_audience_names_the_targets_scope_setting(
    target: Emulator, served: str
) -> None:
    settings = entra_target(served, entra_scope="https://cognitiveservices.azure.com/.default")
    async with ConversationsClient(settings) as client:
        with pytest.raises(AuthError) as caught:
            await client.create_conversation([], {})
    message = str(caught.value)
    assert "audience is incorrect (https://ai.azure.com)" in message
    assert "migrate.target.entra_scope (https://cognitiveservices.azure.com/.default)" in message
    assert "Azure AI User" in message
    assert target.identity.issued == 2  # the first token, and one renewal: no loop
    assert target.conversations.by_id == {}
