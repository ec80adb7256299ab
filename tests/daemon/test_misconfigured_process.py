"""`threadsync run` started with a wrong endpoint: /readyz and `threadsync check` say why, the
mirror is left as it was, and a restart with the endpoint fixed is ready and healthy again.
A subprocess against the emulator on a loopback socket, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import text

from tests.harness import DaemonProcess, cli, emulator_url, env_for, wait_for
from worker.client import ApiClient
from worker.config import ApiSettings
from worker.emulator import Emulator
from worker.store.db import Mirror
from worker.store.repo import add_threads
from worker.sync.runner import sync_threads

__all__ = ["emulator_url"]  # the fixture, imported to be used here


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(seed=16)


def fingerprint(mirror: Mirror) -> dict[str, list[Any]]:
    with mirror.read() as session:
        return {
            table: [tuple(r) for r in session.execute(text(f"SELECT * FROM {table} ORDER BY 1"))]
            for table in ("message", "tracked_thread", "sync_state")
        }


async def synced_once(base_url: str, emulator: Emulator, mirror: Mirror) -> None:
    api = ApiSettings(endpoint=base_url, api_key=SecretStr(emulator.api_key))
    async with ApiClient(api) as client:
        assert (await sync_threads(client, mirror)).ok


def readyz(base: str) -> httpx.Response:
    return httpx.get(base + "/readyz")


def test_a_daemon_with_a_wrong_endpoint_is_unready_and_says_why(
    emulator: Emulator, emulator_url: str, mirror: Mirror, mirror_url: str, tmp_path: Path
) -> None:
    ids = emulator.seed(seed=2, threads=4, messages=6)
    with mirror.write() as session:
        add_threads(session, ids)
    anyio.run(synced_once, emulator_url, emulator, mirror)
    with mirror.write() as session:  # due now: the daemon's first dispatch takes them all
        session.execute(text("UPDATE tracked_thread SET next_sync_at = NULL"))
    before = fingerprint(mirror)
    emulator.set_behaviour(unknown_route="resource")  # Azure's generic "Resource not found"
    wrong = env_for(
        emulator_url + "/openai", emulator, mirror_url, THREADSYNC_DAEMON__HEALTH_PORT="0"
    )
    daemon = DaemonProcess(wrong, tmp_path / "wrong.log")
    try:
        base = f"http://127.0.0.1:{daemon.wait_event('daemon.health_listening')['port']}"
        daemon.wait_event("daemon.configuration_error")
        answer = readyz(base)
        assert answer.status_code == 503
        assert answer.text.startswith("configuration error: sync stopped, nothing was marked")
        assert "AZURE_OPENAI_ENDPOINT" in answer.text
        assert httpx.get(base + "/healthz").status_code == 200  # alive, just not useful
        check = cli(wrong, "check")
        assert check.returncode == 1
        assert "configuration error" in check.stderr
        assert "AZURE_OPENAI_ENDPOINT" in check.stderr
        assert daemon.terminate(30) == 0
        # Compared once stopped: a dispatch under way holds leases, given back when it ends.
        assert fingerprint(mirror) == before
    finally:
        daemon.close()

    emulator.append_messages(ids[0], n=2)
    fixed = env_for(emulator_url, emulator, mirror_url, THREADSYNC_DAEMON__HEALTH_PORT="0")
    daemon = DaemonProcess(fixed, tmp_path / "fixed.log")
    try:
        base = f"http://127.0.0.1:{daemon.wait_event('daemon.health_listening')['port']}"
        wait_for(lambda: readyz(base).status_code == 200, 30, "readyz", daemon)
        # Healthy once the first dispatch has run through and cleared the old reason.
        wait_for(lambda: cli(fixed, "check").returncode == 0, 30, "check", daemon)
        wait_for(
            lambda: len(fingerprint(mirror)["message"]) == len(before["message"]) + 2,
            30,
            "the new messages",
            daemon,
        )
        assert daemon.terminate(30) == 0
    finally:
        daemon.close()
