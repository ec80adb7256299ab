"""Daemon benchmark: 2,000 tracked threads all due at once, against the emulator in a child process.

Measures (issue 6, Performance):

- ``worst_stall_ms``: the worst event-loop stall while the dispatcher works through the backlog,
  seen by a heartbeat task that asks to sleep 10 ms and records how late it wakes;
- ``pacer_rate_error_pct``: how far the achieved request rate is from the configured one;
- ``idle_cpu_pct`` and ``idle_rss_mb``: a real `threadsync run` subprocess on the synced mirror,
  over a quiet window (nothing due), read with psutil.

Run: ``.venv/bin/python -m bench.bench_daemon`` (``THREADSYNC_BENCH_SCALE=0.1`` for a smoke run).
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
import psutil
from pydantic import SecretStr

from worker import logs
from worker.client import ApiClient, ClientEvents, Pacer
from worker.config import ApiSettings, DaemonSettings, RetrySettings, Settings, SyncSettings
from worker.daemon.dispatcher import Dispatcher
from worker.daemon.due import due_count
from worker.daemon.lifecycle import tune_interpreter
from worker.memory import tune_collector
from worker.store.db import Mirror
from worker.store.repo import add_threads

API_KEY = "bench-daemon-key"
THREADS = 2000
RATE = 50.0
IDLE_WINDOW = 10.0


def _scale() -> float:
    return float(os.environ.get("THREADSYNC_BENCH_SCALE", "1.0"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Stamps(ClientEvents):
    """When each answer arrived (for the achieved rate)."""

    def __init__(self) -> None:
        self.at: list[float] = []

    def on_response(self, method: str, route: str, status: int | None, seconds: float) -> None:
        self.at.append(time.monotonic())


def _start_emulator(port: int, threads: int) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "worker",
        "--log-level",
        "warning",
        "emulator",
        "--port",
        str(port),
        "--api-key",
        API_KEY,
        "--threads",
        str(threads),
        "--messages",
        "3",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/_emulator/stats", timeout=2)
            return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the emulator did not start")


async def _drain(settings: Settings, mirror: Mirror, base: str) -> dict[str, float]:
    """Dispatch until nothing is due, with a heartbeat task watching the loop."""
    tune_collector()  # as the `threadsync` entry point does
    tune_interpreter()  # as `threadsync run` does
    stamps = _Stamps()
    pacer = Pacer(RATE)
    lags: list[float] = []
    api = ApiSettings(endpoint=base, api_key=SecretStr(API_KEY))
    async with (
        ApiClient(api, RetrySettings(), pacer=pacer, events=stamps) as client,
        anyio.create_task_group() as tg,
    ):

        async def heartbeat() -> None:
            while True:
                asked = time.monotonic()
                await anyio.sleep(0.01)
                lags.append(time.monotonic() - asked - 0.01)

        tg.start_soon(heartbeat)
        dispatcher = Dispatcher(client, mirror, settings, owner="bench")
        started = time.monotonic()
        batches = 0
        while (await dispatcher.dispatch_once()).claimed:
            batches += 1
        elapsed = time.monotonic() - started
        tg.cancel_scope.cancel()
    left = await mirror.run(_due_now, mirror)
    n = len(stamps.at)
    achieved = (n - 1) / (stamps.at[-1] - stamps.at[0]) if n > 1 else 0.0
    return {
        "threads_left_due": float(left),
        "batches": float(batches),
        "drain_seconds": elapsed,
        "requests": float(n),
        "worst_stall_ms": max(lags, default=0.0) * 1000,
        "p99_stall_ms": sorted(lags)[int(len(lags) * 0.99)] * 1000 if lags else 0.0,
        "stalls_over_100ms": float(sum(lag > 0.1 for lag in lags)),
        "pacer_configured_rps": RATE,
        "pacer_achieved_rps": achieved,
        "pacer_rate_error_pct": abs(achieved - RATE) / RATE * 100,
    }


def _due_now(mirror: Mirror) -> int:
    from worker.store.models import utcnow  # noqa: PLC0415 - bench-local helper

    with mirror.read() as session:
        return due_count(session, utcnow())


def _idle(db_url: str, base: str) -> dict[str, float]:
    """A real daemon on the synced mirror: CPU and RSS over a quiet window."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THREADSYNC_", "AZURE_"))}
    env.update(
        {
            "AZURE_OPENAI_ENDPOINT": base,
            "AZURE_OPENAI_API_KEY": API_KEY,
            "THREADSYNC_DATABASE_URL": db_url,
            "THREADSYNC_LOG__LEVEL": "warning",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ps = psutil.Process(proc.pid)
        time.sleep(8.0)  # start-up (imports, first heartbeat and dispatch) is not idle time
        before = ps.cpu_times()
        t0 = time.monotonic()
        time.sleep(IDLE_WINDOW)
        after = ps.cpu_times()
        wall = time.monotonic() - t0
        rss = ps.memory_info().rss
        cpu = (after.user + after.system - before.user - before.system) / wall * 100
    finally:
        proc.terminate()
        code = proc.wait(timeout=30)
    return {"idle_cpu_pct": cpu, "idle_rss_mb": rss / 1e6, "idle_exit_code": float(code)}


def main() -> dict[str, float]:
    logs.configure(level="warning")
    threads = max(10, round(THREADS * _scale()))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    emulator = _start_emulator(port, threads)
    try:
        ids = list(httpx.get(base + "/_emulator/truth", timeout=60).json()["threads"])
        with tempfile.TemporaryDirectory() as tmp:
            db_url = f"sqlite:///{Path(tmp) / 'bench.db'}"
            mirror = Mirror(db_url)
            with mirror.write() as session:
                add_threads(session, ids)
            settings = Settings(
                database_url=db_url,
                daemon=DaemonSettings(requests_per_second=RATE),
                sync=SyncSettings(concurrency=8),
            )
            figures = {"threads": float(len(ids))}
            figures.update(anyio.run(_drain, settings, mirror, base, backend="asyncio"))
            mirror.dispose()
            figures.update(_idle(db_url, base))
    finally:
        emulator.terminate()
        emulator.wait(timeout=30)
    print(f"daemon bench: {int(figures['threads'])} threads due at once")
    for key, value in figures.items():
        print(f"  {key:24} {value:10.2f}")
    return figures


if __name__ == "__main__":
    main()
