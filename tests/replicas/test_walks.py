"""The emulator's record of replicas' walks, and the client's replica User-Agent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from worker.client import ApiClient
from worker.config import ApiSettings
from worker.emulator import Emulator, control, serve_in_thread
from worker.emulator.walks import WalkLog
from worker.testing import EmulatorTransport

UA = "threadsync/0.1.0 replica/"


def test_walks_of_one_thread_by_two_replicas_overlapping_in_time_are_reported() -> None:
    log = WalkLog()
    log.record("t1", UA + "a", 0.0, 0.1)
    log.record("t1", UA + "a", 0.15, 0.3)  # same walk: 0.05 s later
    log.record("t1", UA + "b", 1.0, 1.1)  # after a's walk ended: a hand-over, fine
    log.record("t2", UA + "a", 0.0, 0.5)
    log.record("t2", UA + "b", 0.2, 0.3)  # inside a's walk of t2
    log.record("t3", "threadsync/0.1.0", 0.0, 9.0)  # no replica: not recorded
    assert [(w.replica, w.requests) for w in log.walks("t1")] == [("a", 2), ("b", 1)]
    overlaps = log.overlaps()
    assert [(t, a.replica, b.replica) for t, a, b in overlaps] == [("t2", "a", "b")]
    assert log.walks("t3") == []


@pytest.mark.anyio
async def test_the_client_names_its_replica_and_the_emulator_records_it() -> None:
    emulator = Emulator(seed=4)
    [thread] = emulator.seed(seed=4, threads=1, messages=3)
    with serve_in_thread(emulator) as base_url:
        api = ApiSettings(endpoint=base_url, api_key=SecretStr(emulator.api_key))
        async with ApiClient(api, agent="replica/host:7:abc") as client:
            await client.list_messages(thread, limit=10, order="asc")
    assert emulator.walks.replicas() == {"host:7:abc"}
    [walk] = emulator.walks.walks(thread)
    assert walk.replica == "host:7:abc"


def test_run_in_replicas_mode_on_sqlite_is_one_line_and_exit_2(tmp_path: Path) -> None:
    db = tmp_path / "mirror.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADSYNC_")}
    env.update(
        {"THREADSYNC_DATABASE_URL": f"sqlite:///{db}", "THREADSYNC_DAEMON__MODE": "replicas"}
    )
    done = subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "daemon.mode = replicas needs a PostgreSQL mirror" in lines[0]
    assert not db.exists()


@pytest.mark.anyio
async def test_the_request_log_is_off_until_started_and_keeps_the_last_n() -> None:
    """The budget's witness: each API request's arrival and replica, the last ``capacity`` of
    them once started (control plane: ``POST /_emulator/requests {"capacity": n}``)."""
    emulator = Emulator(seed=5)
    [thread] = emulator.seed(seed=5, threads=1, messages=3)
    api = ApiSettings(endpoint="http://127.0.0.1:1", api_key=SecretStr(emulator.api_key))
    transport = EmulatorTransport(emulator)
    async with ApiClient(api, agent="replica/host:7:abc", transport=transport) as client:
        await client.list_messages(thread, limit=10, order="asc")
        assert emulator.requests.entries() == []  # off by default
        assert control.handle(emulator, "POST", "/_emulator/requests", {"capacity": 2}) == {
            "capacity": 2,
            "requests": [],
        }
        for _ in range(3):
            await client.list_messages(thread, limit=10, order="asc")
    async with ApiClient(api, transport=transport) as anonymous:
        await anonymous.list_messages(thread, limit=10, order="asc")
    got = control.handle(emulator, "GET", "/_emulator/requests", None)
    assert [replica for _, replica in got["requests"]] == ["host:7:abc", ""]
    first, second = (at for at, _ in got["requests"])
    assert first <= second
