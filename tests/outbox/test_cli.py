"""The commands: `metadata set|show` in-process, and `threadsync push` as a subprocess that is
SIGKILLed at random moments against a real loopback emulator, then run to completion."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from typer.testing import CliRunner

from tests.outbox.conftest import World, make_world
from worker.cli.app import app
from worker.emulator import serve_in_thread
from worker.outbox import edit_counts, set_metadata
from worker.store.db import Mirror
from worker.store.models import Message

ROOT = Path(__file__).resolve().parents[2]


def run_cli(mirror_url: str, *args: str) -> Any:
    try:
        return CliRunner().invoke(app, ["--database-url", mirror_url, *args])
    finally:
        # The app pointed structlog at the runner's captured stderr, which is closed now.
        structlog.reset_defaults()


@pytest.mark.anyio
async def test_metadata_set_and_show(mirror_url: str) -> None:
    """`metadata set` queues (pairs and --unset), `show --json` reports it; bad input exits 2."""
    mirror = Mirror(mirror_url)
    world = await make_world(mirror, threads=1, messages=2)
    thread = world.thread_ids[0]
    msg = world.messages(thread)[0]["id"]
    done = run_cli(mirror_url, "metadata", "set", thread, msg, "reviewed=yes", "label=a=b")
    assert done.exit_code == 0, done.output
    shown = run_cli(mirror_url, "metadata", "show", thread, msg, "--json")
    assert shown.exit_code == 0, shown.output
    view = orjson.loads(shown.stdout)
    assert view["state"] == "pending"
    assert view["pending_keys"] == ["label", "reviewed"]
    assert view["desired"]["label"] == "a=b"
    assert run_cli(mirror_url, "metadata", "set", thread, msg, "novalue").exit_code == 2
    too_long = run_cli(mirror_url, "metadata", "set", thread, msg, "k=" + "v" * 513)
    assert too_long.exit_code == 2
    assert "512" in too_long.output
    assert run_cli(mirror_url, "metadata", "set", thread, "msg_nope", "a=1").exit_code == 2
    mirror.dispose()


def edit_everything(world: World) -> dict[str, dict[str, str]]:
    intended = {}
    for thread in world.thread_ids:
        for msg in world.messages(thread):
            meta = dict(msg["metadata"] or {})
            if len(meta) >= 16:
                continue
            set_metadata(world.mirror, thread, msg["id"], set={"pushed": msg["id"][-6:]})
            intended[msg["id"]] = {**meta, "pushed": msg["id"][-6:]}
    return intended


def push_process(mirror_url: str, base_url: str, api_key: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THREADSYNC_", "AZURE_"))}
    env.update(
        THREADSYNC_DATABASE_URL=mirror_url,
        AZURE_OPENAI_ENDPOINT=base_url,
        AZURE_OPENAI_API_KEY=api_key,
        THREADSYNC_LOG__LEVEL="warning",
        THREADSYNC_LOG__FORMAT="json",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "push", "--concurrency", "4"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow  # four CLI process starts per backend
@pytest.mark.anyio
async def test_push_killed_at_random_moments_applies_every_edit_once(mirror_url: str) -> None:
    """SIGKILL lands right after the server applied the k-th modify (k random), several times;
    a last push completes. Every message holds its edit, written exactly once in all."""
    mirror = Mirror(mirror_url)
    world = await make_world(mirror, threads=4, messages=10)
    intended = edit_everything(world)
    emulator = world.emulator
    emulator.faults.latency_ms = 15.0
    rng = random.Random(20261128)

    reached = threading.Event()
    target = {"n": 0}
    recorded = emulator.record_modify

    def record_modify(*args: Any, **kwargs: Any) -> None:
        recorded(*args, **kwargs)
        if len(emulator.modify_calls) >= target["n"]:
            reached.set()

    emulator.record_modify = record_modify  # type: ignore[method-assign]
    kills = 0
    with serve_in_thread(emulator) as base_url:
        for _ in range(3):
            target["n"] = len(emulator.modify_calls) + rng.randint(1, 6)
            reached.clear()
            proc = push_process(mirror_url, base_url, emulator.api_key)
            if reached.wait(timeout=20) and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(timeout=20)
        final = push_process(mirror_url, base_url, emulator.api_key)
        _, err = final.communicate(timeout=30)
        assert final.returncode == 0, err.decode()
    assert kills >= 2
    for thread in world.thread_ids:
        for msg in world.messages(thread):
            if msg["id"] in intended:
                assert msg["metadata"] == intended[msg["id"]]
    writes = Counter(c["message_id"] for c in world.applied_modifies())
    assert writes == dict.fromkeys(intended, 1)
    with mirror.read() as session:
        assert edit_counts(session) == {"pending": 0, "conflicted": 0, "failed": 0}
        for msg_id, meta in intended.items():
            row = session.get(Message, msg_id)
            assert row is not None
            assert row.meta == meta
    mirror.dispose()
