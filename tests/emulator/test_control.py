"""The control plane (Python and HTTP), seeding, state persistence and the CLI command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from worker.cli import emulator as emulator_cli
from worker.emulator import Emulator, EmulatorControl, ManualClock, WireError, create_app

from .conftest import AZURE_Q, KEY

pytestmark = pytest.mark.anyio


@pytest.fixture
async def control(emulator: Emulator) -> AsyncIterator[EmulatorControl]:
    async with EmulatorControl(transport=httpx.ASGITransport(app=create_app(emulator))) as ctl:
        yield ctl


async def test_control_plane_round_trip(control: EmulatorControl, emulator: Emulator) -> None:
    """Seed, append, edit, finish, delete, clock, behaviour, faults, truth and stats over HTTP."""
    tids = await control.seed(seed=9, threads=2, messages=5)
    assert len(await control.truth()) == 2
    planted = await control.append_messages(
        tids[0],
        n=2,
        messages=[{"role": "assistant", "content": "thinking", "status": "in_progress"}],
    )
    assert len(planted) == 3
    mid = planted[0]["id"]
    finished = await control.finish_message(tids[0], mid, text=" done")
    assert finished["status"] == "completed"
    assert finished["content"][0]["text"]["value"] == "thinking done"
    assert finished["completed_at"] is not None
    with pytest.raises(WireError) as caught:
        await control.finish_message(tids[0], mid)
    assert caught.value.status == 400
    assert (await control.edit_metadata(tids[0], mid, {"x": "1"}))["metadata"] == {"x": "1"}
    with pytest.raises(WireError):
        await control.edit_metadata(tids[0], mid, {"x": None})
    await control.delete_message(tids[0], mid)
    assert mid not in [m["id"] for m in (await control.truth())[tids[0]]]
    now = await control.set_clock(1_800_000_000)
    assert now == 1_800_000_000
    assert await control.advance_clock(5) == 1_800_000_005
    assert (await control.set_behaviour(cursor_missing="empty"))["cursor_missing"] == "empty"
    assert (await control.behaviour())["cursor_missing"] == "empty"
    faults = await control.add_fault({"fault": "503", "times": 2, "route": "list"})
    assert faults["rules"][0]["times"] == 2
    await control.clear_faults()
    assert emulator.faults.rules == []
    await control.delete_thread(tids[1])
    assert list(await control.truth()) == [tids[0]]
    assert (await control.stats())["routes"] == {}
    await control.reset()
    assert await control.truth() == {}


async def test_stats_count_by_route_and_status(
    client: httpx.AsyncClient, control: EmulatorControl, emulator: Emulator
) -> None:
    """Stats count requests by route template and status; resetting empties them."""
    [tid] = emulator.seed(threads=1, messages=2)
    await client.get(f"/openai/threads/{tid}/messages", params=AZURE_Q)
    await client.get(f"/openai/threads/{tid}/messages", params=AZURE_Q)
    await client.get("/openai/threads/thread_nope/messages", params=AZURE_Q)
    stats = await control.stats()
    assert stats["routes"] == {"GET /openai/threads/{thread_id}/messages": {"200": 2, "404": 1}}
    await control.reset_stats()
    assert (await control.stats())["routes"] == {}


async def test_unknown_control_route_is_404(control: EmulatorControl) -> None:
    """A control path that does not exist answers 404, not a crash."""
    with pytest.raises(WireError) as caught:
        await control._call("GET", "nothing-here")
    assert caught.value.status == 404


def test_seed_is_deterministic_and_varied() -> None:
    """Same seed and clock: identical data. The data covers the variety real threads have."""
    one = Emulator(clock=ManualClock())
    two = Emulator(clock=ManualClock())
    one.seed(seed=42, threads=4, messages=80)
    two.seed(seed=42, threads=4, messages=80)
    assert one.truth() == two.truth()
    messages = [m for ms in one.truth()["threads"].values() for m in ms]
    statuses = {m["status"] for m in messages}
    assert statuses == {"completed", "incomplete", "in_progress"}
    assert {m["role"] for m in messages} == {"user", "assistant"}
    kinds = {
        a["type"]
        for m in messages
        for p in m["content"]
        if p["type"] == "text"
        for a in p["text"]["annotations"]
    }
    assert kinds == {"file_citation", "file_path"}
    assert any(p["type"] == "image_file" for m in messages for p in m["content"])
    assert any(m["attachments"] for m in messages)
    assert any(len(m["metadata"]) == 16 for m in messages)
    texts = [p["text"]["value"] for m in messages for p in m["content"] if p["type"] == "text"]
    assert any(len(t) > 2000 for t in texts)
    assert any(not t.isascii() for t in texts)
    stamps = [m["created_at"] for m in messages]
    assert len(set(stamps)) < len(stamps)  # ties exist...
    assert len(set(stamps)) > len(stamps) // 4  # ...but are not universal
    assert all(m["assistant_id"] and m["run_id"] for m in messages if m["role"] == "assistant")


def test_ids_are_never_issued_twice() -> None:
    """A seed and the emulator's own generator can draw the same sequence: ids stay unique."""
    em = Emulator(clock=ManualClock(), seed=1)
    [one] = em.seed(seed=0, threads=1, messages=11)
    [two] = em.seed(seed=1, threads=1, messages=9)  # the same generator state as seed=1 above
    em.append_messages(two, n=23)
    em.create_thread({"messages": [{"role": "user", "content": "x"}]})
    gone = em.truth()["threads"][one][0]["id"]
    em.delete_message(one, gone)
    added = em.append_messages(one, n=5)
    assert gone not in {m["id"] for m in added}
    ids = [m["id"] for ms in em.truth()["threads"].values() for m in ms] + [gone]
    assert len(ids) == 11 + 9 + 23 + 1 + 5
    assert len(set(ids)) == len(ids)


def test_state_file_survives_a_restart(tmp_path: Path) -> None:
    """Every mutation is saved atomically; a new emulator on the same file sees it all."""
    path = tmp_path / "state" / "emulator.json"
    first = Emulator(clock=ManualClock(), state_path=path)
    [tid] = first.seed(seed=1, threads=1, messages=6)
    gone = first.truth()["threads"][tid][0]["id"]
    first.delete_message(tid, gone)
    first.set_behaviour(cursor_missing="keep_place")
    assert path.exists()
    assert [p.name for p in path.parent.iterdir()] == ["emulator.json"]  # no temp files left
    second = Emulator(clock=ManualClock(), state_path=path)
    assert second.truth() == first.truth()
    assert second.behaviour.cursor_missing == "keep_place"
    # keep_place still finds the deleted message's place after the reload
    assert len(second.list_messages(tid, order="asc", after=gone).items) == 5
    new = second.create_message(tid, {"role": "user", "content": "after restart"})
    assert new["id"] not in [m["id"] for m in first.truth()["threads"][tid]]


def test_cli_registers_with_env_twins() -> None:
    """register() adds `emulator`; every option shows its THREADSYNC_EMULATOR__* twin in help."""
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """Root."""

    emulator_cli.register(app)
    result = CliRunner().invoke(app, ["emulator", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for twin in (
        "PORT",
        "HOST",
        "API_KEY",
        "SEED",
        "THREADS",
        "MESSAGES",
        "LATENCY_MS",
        "STATE",
        "CURSOR_MISSING",
        "METADATA",
        "TIES",
        "THREADS_FILE",
    ):
        assert f"THREADSYNC_EMULATOR__{twin}" in result.output


def test_cli_serves_and_prints_the_endpoint(tmp_path: Path) -> None:
    """The command, as a subprocess, prints endpoint and generated key and answers the SDK
    contract; SIGTERM stops it and the state file is kept."""
    script = (
        "import typer\n"
        "from worker.cli import emulator\n"
        "app = typer.Typer()\n"
        "@app.callback()\n"
        "def root() -> None: pass\n"
        "emulator.register(app)\n"
        "app()\n"
    )
    state = tmp_path / "s.json"
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            script,
            "emulator",
            "--port",
            str(port),
            "--threads",
            "2",
            "--messages",
            "3",
            "--state",
            str(state),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip() for _ in range(3)]
        assert lines[0] == f"AZURE_OPENAI_ENDPOINT=http://127.0.0.1:{port}"
        key = lines[1].split("=", 1)[1]
        assert key
        assert lines[2] == "OPENAI_API_VERSION=2024-08-01-preview"
        truth = _get_when_up(f"http://127.0.0.1:{port}/_emulator/truth")
        tid = next(iter(truth["threads"]))
        r = httpx.get(
            f"http://127.0.0.1:{port}/openai/threads/{tid}/messages",
            params=AZURE_Q,
            headers={"api-key": key},
        )
        assert len(r.json()["data"]) == 3
        assert (
            httpx.get(
                f"http://127.0.0.1:{port}/openai/threads/{tid}",
                params=AZURE_Q,
                headers={"api-key": KEY},
            ).status_code
            == 401
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert state.exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get_when_up(url: str) -> Any:
    deadline = time.monotonic() + 30
    while True:
        try:
            return httpx.get(url).json()
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # startup poll of a subprocess; no event crosses the process
