"""Issue 16 as a user meets it: `threadsync sync` with a wrong endpoint, api-version, profile,
key or host exits 2 with one line naming the setting, changes nothing in the mirror, and the
fixed configuration carries on. Subprocesses against the emulator on a loopback port, on SQLite
and PostgreSQL."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from tests.harness import shell_env
from worker.emulator import Emulator, serve_in_thread
from worker.store.db import Mirror

KEY = "sk-test-misconfigured-0f3e"


@pytest.fixture
def served() -> Iterator[tuple[Emulator, str]]:
    emulator = Emulator(api_key=KEY, seed=16)
    with serve_in_thread(emulator) as url:
        yield emulator, url


def env_for(url: str, mirror_url: str, **extra: str) -> dict[str, str]:
    return shell_env(
        url,
        KEY,
        mirror_url,
        THREADSYNC_LOG__LEVEL="warning",
        THREADSYNC_RETRY__MAX_DELAY="0.02",
        THREADSYNC_RETRY__MAX_ATTEMPTS="3",
        **extra,
    )


def threadsync(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def fingerprint(mirror: Mirror) -> dict[str, list[Any]]:
    with mirror.read() as session:
        return {
            table: [tuple(r) for r in session.execute(text(f"SELECT * FROM {table} ORDER BY 1"))]
            for table in ("message", "tracked_thread", "sync_state", "mirror_meta")
        }


def requests(emulator: Emulator) -> int:
    return sum(n for by in emulator.stats()["routes"].values() for n in by.values())


@pytest.mark.parametrize(
    ("wrong", "named"),
    [
        ({"AZURE_OPENAI_ENDPOINT": "{url}/openai"}, "AZURE_OPENAI_ENDPOINT"),
        ({"OPENAI_API_VERSION": "2023-01-01"}, "OPENAI_API_VERSION"),
        ({"AZURE_OPENAI_ENDPOINT": "{url}/v1"}, "api.profile"),  # an OpenAI base URL, azure profile
    ],
)
def test_a_wrong_setting_exits_2_changes_nothing_and_the_fixed_one_resumes(
    served: tuple[Emulator, str],
    mirror: Mirror,
    mirror_url: str,
    wrong: dict[str, str],
    named: str,
) -> None:
    emulator, url = served
    ids = emulator.seed(seed=1, threads=3, messages=8)
    env = env_for(url, mirror_url)
    assert threadsync(env, "threads", "add", *ids).returncode == 0
    assert threadsync(env, "sync").returncode == 0
    before = fingerprint(mirror)
    bad = threadsync(
        env_for(url, mirror_url, **{k: v.format(url=url) for k, v in wrong.items()}), "sync"
    )
    assert bad.returncode == 2, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert named in bad.stderr
    assert "nothing was marked" in bad.stderr
    assert fingerprint(mirror) == before
    emulator.append_messages(ids[1], n=3)
    fixed = threadsync(env, "sync")
    assert fixed.returncode == 0, fixed.stderr
    assert "3/3 threads ok, 0 gone, 0 failed; 3 added" in fixed.stdout


def test_a_wrong_key_sends_a_few_requests_and_prints_one_line(
    served: tuple[Emulator, str], mirror: Mirror, mirror_url: str
) -> None:
    emulator, url = served
    ids = [f"thread_{n:04d}" for n in range(300)]
    env = env_for(url, mirror_url)
    assert threadsync(env, "threads", "add", *ids).returncode == 0
    before = fingerprint(mirror)
    emulator.reset_stats()
    proc = threadsync(
        env_for(url, mirror_url, AZURE_OPENAI_API_KEY="sk-wrong"), "sync", "--concurrency", "4"
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "HTTP 401: Access denied" in line
    assert "401 401" not in line
    assert "AZURE_OPENAI_API_KEY" in line
    assert "sk-wrong" not in line
    assert requests(emulator) <= 4  # bounded by the concurrency, not by the 300 threads
    assert fingerprint(mirror) == before


def test_no_server_on_the_port_names_the_host(mirror: Mirror, mirror_url: str) -> None:
    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = env_for(url, mirror_url)
    ids = [f"thread_{n:04d}" for n in range(200)]
    assert threadsync(env, "threads", "add", *ids).returncode == 0
    before = fingerprint(mirror)
    proc = threadsync(env, "sync", "--concurrency", "4")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "ConnectError" in line
    assert "none connected; check the host 127.0.0.1 (AZURE_OPENAI_ENDPOINT)" in line
    assert fingerprint(mirror) == before
