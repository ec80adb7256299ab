"""Metadata push throughput: 1,000 edits over 200 threads against the emulator at 20 ms latency.

The emulator is `threadsync emulator` (uvicorn) on a loopback port in a subprocess; the mirror is
a temporary SQLite file, synced from it first. Reports wall time, HTTP requests per edit (target:
at most 2, a read and a write) and the wall-time target 1.5 x (edits x 2 x latency / concurrency).
Run: ``.venv/bin/python -m bench.bench_push``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx
from pydantic import SecretStr
from sqlalchemy import select
from sqlmodel import col

from worker import logs
from worker.client import ApiClient
from worker.config import ApiSettings
from worker.emulator import EmulatorControl
from worker.outbox import push_pending, set_metadata
from worker.store.db import Mirror
from worker.store.models import Message
from worker.store.repo import add_threads
from worker.sync.runner import sync_threads

THREADS = 200
PER_THREAD = 5
LATENCY = 0.020
CONCURRENCY = 8
API_KEY = "bench-key"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_emulator(port: int) -> subprocess.Popen[bytes]:
    """`threadsync emulator` in its own process, so it does not share the client's GIL."""
    args = ["--port", str(port), "--api-key", API_KEY, "--threads", str(THREADS)]
    args += ["--messages", str(PER_THREAD), "--seed", "42", "--latency-ms", str(LATENCY * 1000)]
    env = {**os.environ, "THREADSYNC_LOG__LEVEL": "warning"}
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "emulator", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the emulator exited during startup")
        try:
            httpx.get(f"{url}/_emulator/stats", timeout=1).raise_for_status()
        except httpx.HTTPError:
            time.sleep(0.1)
        else:
            return
    raise RuntimeError("the emulator did not answer within 60 s")


def _queue_edits(mirror: Mirror) -> int:
    with mirror.read() as session:
        rows = session.execute(
            select(col(Message.thread_id), col(Message.id), col(Message.meta))
        ).all()
    for n, (thread_id, message_id, meta) in enumerate(rows):
        # A message already at 16 pairs can only change a value it has.
        key = sorted(meta)[0] if meta and len(meta) >= 16 else "bench"
        set_metadata(mirror, thread_id, message_id, set={key: f"v{n}"})
    return len(rows)


async def _run(mirror: Mirror, url: str) -> dict[str, float]:
    api = ApiSettings(endpoint=url, api_key=SecretStr(API_KEY))
    async with ApiClient(api) as client, EmulatorControl(url) as control:
        ids = list(await control.truth())
        with mirror.write() as session:
            add_threads(session, ids)
        synced = await sync_threads(client, mirror, concurrency=16)
        assert synced.ok
        started = time.perf_counter()
        edits = _queue_edits(mirror)
        queue_seconds = time.perf_counter() - started
        await control.reset_stats()
        started = time.perf_counter()
        report = await push_pending(client, mirror, concurrency=CONCURRENCY)
        wall = time.perf_counter() - started
        stats = await control.stats()
    assert report.ok, f"{len(report.outcomes) - len(report.applied)} edits not applied"
    requests = sum(n for by in stats["routes"].values() for n in by.values())
    writes = sum(1 for c in stats["modify_calls"] if c["applied"])
    ideal = edits * 2 * LATENCY / CONCURRENCY
    return {
        "edits": float(edits),
        "queue_seconds": queue_seconds,
        "push_seconds": wall,
        "requests_per_edit": requests / edits,
        "writes_per_edit": writes / edits,
        "ideal_seconds": ideal,
        "target_seconds": 1.5 * ideal,
        "edits_per_second": edits / wall,
    }


def main() -> dict[str, float]:
    logs.configure(level="warning")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start_emulator(port)
    try:
        _wait_ready(url, proc)
        with tempfile.TemporaryDirectory() as tmp:
            mirror = Mirror(f"sqlite:///{Path(tmp) / 'bench.db'}")
            try:
                result = anyio.run(_run, mirror, url)
            finally:
                mirror.dispose()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    verdict = "within" if result["push_seconds"] <= result["target_seconds"] else "OVER"
    print(
        f"push: {result['edits']:.0f} edits over {THREADS} threads, {LATENCY * 1000:.0f} ms"
        f" latency, concurrency {CONCURRENCY}\n"
        f"  queued locally in {result['queue_seconds']:.2f} s\n"
        f"  pushed in {result['push_seconds']:.2f} s ({result['edits_per_second']:.0f} edits/s),"
        f" {verdict} the target {result['target_seconds']:.2f} s"
        f" (ideal {result['ideal_seconds']:.2f} s)\n"
        f"  {result['requests_per_edit']:.2f} requests and {result['writes_per_edit']:.2f}"
        " writes per edit (at most 2 and exactly 1 wanted)"
    )
    return result


if __name__ == "__main__":
    main()
