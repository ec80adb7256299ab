"""The process tier's harness: `threadsync` as a user runs it (a subprocess), a daemon in the
background with its JSON log, against the emulator served on a loopback socket; and comparing a
mirror's export with the emulator's truth. The fakes are in :mod:`worker.testing`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from worker.emulator import Emulator, serve_in_thread
from worker.emulator.identity import TOKEN_PATH
from worker.export.source import Selection, iter_rows
from worker.store.db import Mirror
from worker.store.repo import add_threads

THREADSYNC = [sys.executable, "-m", "worker"]
KEY = "sk-test-DO-NOT-LEAK-4f9a1c2e"


def env_for(base_url: str, emulator: Emulator, db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THREADSYNC_", "AZURE_"))}
    env.update(
        {
            "AZURE_OPENAI_ENDPOINT": base_url,
            "AZURE_OPENAI_API_KEY": emulator.api_key,
            "THREADSYNC_DATABASE_URL": db_url,
            "THREADSYNC_LOG__FORMAT": "json",
            "THREADSYNC_RETRY__INITIAL_DELAY": "0.02",
            "THREADSYNC_RETRY__MAX_DELAY": "0.1",
            "THREADSYNC_RETRY__MAX_ATTEMPTS": "10",
            "THREADSYNC_DAEMON__DISPATCH_INTERVAL": "0.2",
            "THREADSYNC_DAEMON__SYNC_INTERVAL": "0.5",
            "THREADSYNC_DAEMON__HEARTBEAT_INTERVAL": "0.5",
            "THREADSYNC_DAEMON__REQUESTS_PER_SECOND": "400",
            "THREADSYNC_DAEMON__SHUTDOWN_TIMEOUT": "10",
        }
    )
    env.update(extra)
    return env


def replicas_env(
    base_url: str, emulator: Emulator, db_url: str, *, ttl: float, **extra: str
) -> dict[str, str]:
    """:func:`env_for` a daemon in replicas mode with a lease TTL of ``ttl`` seconds; ``extra``:
    the test's own settings."""
    return env_for(
        base_url,
        emulator,
        db_url,
        THREADSYNC_DAEMON__MODE="replicas",
        THREADSYNC_DAEMON__LEASE_TTL=str(ttl),
        **extra,
    )


def cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*THREADSYNC, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def cli_start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*THREADSYNC, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    """Wait for a started command; its exit code and stderr."""
    _, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stderr


class DaemonProcess:
    """`threadsync run` in the background, its JSON log in a file we can poll."""

    def __init__(self, env: dict[str, str], log_file: Path, *args: str) -> None:
        self.log_file = log_file
        self._log = log_file.open("wb")
        self.proc = subprocess.Popen(
            [*THREADSYNC, "run", *args], env=env, stdout=subprocess.DEVNULL, stderr=self._log
        )

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_file.read_bytes().splitlines():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
        return out

    def wait_event(self, name: str, deadline: float = 30.0) -> dict[str, Any]:
        found = wait_for(
            lambda: next((e for e in self.events() if e.get("event") == name), None),
            deadline,
            f"log event {name}",
            self,
        )
        assert isinstance(found, dict)
        return found

    def terminate(self, timeout: float) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


def wait_for(
    probe: Callable[[], Any], deadline: float, what: str, daemon: DaemonProcess | None = None
) -> Any:
    """Poll ``probe`` until it returns something truthy, failing after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while True:
        value = probe()
        if value:
            return value
        if daemon is not None and daemon.proc.poll() is not None:
            tail = daemon.log_file.read_text()[-2000:]
            raise AssertionError(
                f"daemon exited {daemon.proc.returncode} waiting for {what}:\n{tail}"
            )
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def emulator_url(emulator: Emulator) -> Iterator[str]:
    """The test module's ``emulator`` fixture served on a loopback socket: its base URL."""
    with serve_in_thread(emulator) as base_url:
        yield base_url


def track(db_url: str, ids: list[str]) -> None:
    """Track ``ids`` in the mirror at ``db_url`` (as `threadsync threads add` does)."""
    mirror = Mirror(db_url)
    with mirror.write() as session:
        add_threads(session, ids)
    mirror.dispose()


def exported(mirror: Mirror) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for row in iter_rows(mirror, Selection()):
        out.setdefault(row.thread_id, []).append(orjson.loads(row.raw))
    return out


def truth(emulator: Emulator) -> dict[str, list[Any]]:
    return {t: list(m) for t, m in emulator.truth()["threads"].items() if m}


# -- a user's shell: `threadsync` with the SDK variables ---------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[Emulator, str]]:
    emulator = Emulator(api_key=KEY, seed=3)
    with serve_in_thread(emulator) as url:
        yield emulator, url


def bare_environ(*also: str) -> dict[str, str]:
    """This process's environment without a variable threadsync or the SDKs read (nor the
    prefixes in ``also``): a child sees only what its test gives it."""
    prefixes = ("THREADSYNC_", "AZURE_", "OPENAI_", *also)
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def shell_env(url: str, key: str, db_url: str, **settings: str) -> dict[str, str]:
    """A user's shell: the SDK's Azure variables for the emulator at ``url``, the mirror, quick
    retries; ``settings`` (variable names) add to it or override it."""
    env = bare_environ()
    env.update(
        AZURE_OPENAI_ENDPOINT=url,
        AZURE_OPENAI_API_KEY=key,
        OPENAI_API_VERSION="2024-08-01-preview",
        THREADSYNC_DATABASE_URL=db_url,
        THREADSYNC_RETRY__INITIAL_DELAY="0.01",
        THREADSYNC_RETRY__MAX_DELAY="0.05",
    )
    env.update(settings)
    return env


def user_env(url: str, db: Path) -> dict[str, str]:
    return shell_env(url, KEY, f"sqlite:///{db}", THREADSYNC_RETRY__MAX_ATTEMPTS="10")


# What azure-identity's managed-identity credential reads besides the App Service pair: unset, so
# the credential takes the pair (pointed at the emulator) and nothing of the machine's own.
OTHER_IDENTITY_VARIABLES = (
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "AZURE_CLIENT_ID",
)


def managed_identity_env(base_url: str, header: str) -> dict[str, str]:
    """The App Service managed-identity pair, naming the emulator's token endpoint."""
    return {"IDENTITY_ENDPOINT": base_url + TOKEN_PATH, "IDENTITY_HEADER": header}


def use_managed_identity(monkeypatch: pytest.MonkeyPatch, base_url: str, header: str) -> None:
    """This process's managed identity is the emulator's (see :func:`managed_identity_env`)."""
    for name in OTHER_IDENTITY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in managed_identity_env(base_url, header).items():
        monkeypatch.setenv(name, value)


def run(
    args: list[str], env: dict[str, str], cwd: Path, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def truth_lines(emulator: Emulator, thread_ids: list[str]) -> list[Any]:
    threads = emulator.truth()["threads"]
    return [m for t in thread_ids for m in threads[t]]
