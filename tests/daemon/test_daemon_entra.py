"""Proof: `threadsync run` with Entra tokens from azure-identity's ManagedIdentityCredential.

The emulator issues tokens that live 4 seconds from its App Service managed-identity endpoint
(served on a port of its own, so that it can go away) and its Foundry path takes only those
tokens. The daemon runs through more than three token lifetimes with zero failed passes; then the
token endpoint answers 503, then refuses connections: passes fail with one clear line naming the
credential and the cause; when the endpoint returns, the daemon recovers by itself and the mirror
catches up. No token ever reaches the log. Waits are on observable events (tokens issued, log
events, export == truth) under generous deadlines, never on elapsed time.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import (
    OTHER_IDENTITY_VARIABLES,
    DaemonProcess,
    env_for,
    exported,
    managed_identity_env,
    truth,
    wait_for,
)
from worker.emulator import Emulator, serve_in_thread
from worker.emulator.identity import Identity
from worker.store.db import Mirror
from worker.store.repo import add_threads

LIFETIME = 4.0
HEADER = "daemon-identity-header"


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(seed=31, identity=Identity(lifetime=LIFETIME, header=HEADER, entra="foundry"))


@pytest.fixture
def served(emulator: Emulator) -> Iterator[str]:
    with serve_in_thread(emulator) as base_url:
        yield base_url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class IdentityServer:
    """The emulator's token endpoint on a port of its own, stopped and started at will."""

    def __init__(self, emulator: Emulator, port: int) -> None:
        self.emulator = emulator
        self.port = port
        self._running: AbstractContextManager[str] | None = None

    def start(self) -> None:
        running = serve_in_thread(self.emulator, port=self.port)
        running.__enter__()
        self._running = running

    def stop(self) -> None:
        if self._running is not None:
            self._running.__exit__(None, None, None)
            self._running = None


def entra_env(served: str, emulator: Emulator, db_url: str, identity_port: int) -> dict[str, str]:
    env = env_for(
        served,
        emulator,
        db_url,
        THREADSYNC_API__PROFILE="foundry",
        THREADSYNC_API__PROJECT="demo",
        THREADSYNC_API__AUTH="entra",
        THREADSYNC_API__CREDENTIAL="managed-identity",
        THREADSYNC_DAEMON__MAX_BACKOFF="1",
        **managed_identity_env(f"http://127.0.0.1:{identity_port}", HEADER),
    )
    del env["AZURE_OPENAI_API_KEY"]  # no key anywhere: tokens or nothing
    for name in OTHER_IDENTITY_VARIABLES:
        env.pop(name, None)
    return env


def events(daemon: DaemonProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") == name]


@pytest.mark.slow
def test_daemon_outlives_token_lifetimes_and_recovers_from_a_token_endpoint_outage(
    emulator: Emulator, served: str, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'mirror.db'}"
    ids = emulator.seed(seed=3, threads=3, messages=30)
    mirror = Mirror(db_url)
    with mirror.write() as session:
        add_threads(session, ids)
    identity_port = free_port()
    env = entra_env(served, emulator, db_url, identity_port)
    env["THREADSYNC_DAEMON__HEALTH_PORT"] = "0"
    identity = IdentityServer(emulator, identity_port)
    identity.start()
    daemon = DaemonProcess(env, tmp_path / "daemon.log")
    try:
        # 1. More than three lifetimes: tokens are renewed at half-life, so seven tokens span at
        # least three lifetimes. Messages keep arriving meanwhile, one per thread per token.
        wait_for(lambda: exported(mirror) == truth(emulator), 60, "first sync", daemon)
        seen = [emulator.identity.issued]

        def renewed_and_fed() -> bool:
            issued = emulator.identity.issued
            if issued > seen[-1]:
                seen.append(issued)
                for thread_id in ids:
                    emulator.append_messages(thread_id, n=1)
            return issued >= 7

        wait_for(renewed_and_fed, 120, "seven tokens", daemon)
        wait_for(lambda: exported(mirror) == truth(emulator), 60, "caught up", daemon)
        assert events(daemon, "sync.thread_failed") == []
        assert len(events(daemon, "sync.thread_done")) >= 3 * len(ids)
        assert len(events(daemon, "auth.token_renewed")) >= 7

        # 2. The token endpoint answers 503: a clear error once the held token has expired.
        emulator.configure_identity(outage={"status": 503, "times": None})

        def failed_with(cause: str) -> Any:
            return next(
                (e for e in events(daemon, "sync.thread_failed") if cause in e.get("error", "")),
                None,
            )

        failure = wait_for(lambda: failed_with("HTTP 503"), 60, "a 503 failure", daemon)
        assert failure["error"] == (
            "no Entra token from api.credential=managed-identity for"
            " https://ai.azure.com/.default: HTTP 503: The managed identity endpoint is"
            " unavailable."
        )

        # 3. It goes away altogether: connection refused, named as such.
        identity.stop()
        wait_for(lambda: failed_with("Connection refused"), 60, "connection refused", daemon)

        # 4. It comes back: the daemon recovers on its own and the mirror catches up.
        emulator.configure_identity(outage=None)
        issued_before = emulator.identity.issued
        identity.start()
        for thread_id in ids:
            emulator.append_messages(thread_id, n=2)
        wait_for(lambda: emulator.identity.issued > issued_before, 90, "a new token", daemon)
        wait_for(lambda: exported(mirror) == truth(emulator), 60, "recovered", daemon)
        assert daemon.proc.poll() is None
        port = daemon.wait_event("daemon.health_listening")["port"]
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        tokens = {
            sample.labels["outcome"]: sample.value
            for family in text_string_to_metric_families(metrics)
            for sample in family.samples
            if sample.name == "threadsync_entra_tokens_total"
        }
        assert tokens["renewed"] >= 8
        assert tokens["failed"] >= 2
        assert "threadsync_entra_token_expiry_timestamp_seconds" in metrics

        log_text = daemon.log_file.read_text()
        assert emulator.identity.tokens
        assert not any(token in log_text for token in emulator.identity.tokens)
        # azure-identity's own failure logging stays out of the JSON log (threadsync logs once).
        lines = log_text.splitlines()
        assert len(daemon.events()) == len(lines)
        assert events(daemon, "auth.token_failed")
        assert daemon.terminate(timeout=15) == 0
    finally:
        daemon.close()
        identity.stop()
        mirror.dispose()
