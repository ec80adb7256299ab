"""Proof: `threadsync run` as a subprocess against the emulator on a loopback socket.

Pinned: with faults on and messages arriving, the mirror converges to the truth while other
commands run beside the daemon; /metrics (parsed by prometheus_client's own parser) counts exactly
what the emulator saw; SIGTERM mid-sync exits 0 with an intact mirror that a following sync
completes; a second daemon on the same mirror is refused with exit code 2; `check` passes.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import func, select

from tests.harness import (
    DaemonProcess,
    cli_start,
    emulator_url,
    env_for,
    exported,
    finish,
    track,
    truth,
    wait_for,
)
from worker.client import ApiClient
from worker.config import ApiSettings
from worker.emulator import Emulator, FaultRule
from worker.store.db import Mirror
from worker.store.models import Message
from worker.store.repo import remove_threads
from worker.sync.runner import RunReport, sync_threads

__all__ = ["emulator_url"]  # the fixture, imported to be used here


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(seed=21)


async def one_shot_sync(base_url: str, emulator: Emulator, db_url: str) -> RunReport:
    """What `threadsync sync` runs (in-process here: a CLI start costs seconds on CI)."""
    api = ApiSettings(endpoint=base_url, api_key=SecretStr(emulator.api_key))
    mirror = Mirror(db_url)
    try:
        async with ApiClient(api) as client:
            return await sync_threads(client, mirror)
    finally:
        mirror.dispose()


def message_count(mirror: Mirror) -> int:
    with mirror.read() as session:
        return int(session.execute(select(func.count()).select_from(Message)).scalar_one())


def metric_samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def emulator_by_status(emulator: Emulator) -> dict[str, int]:
    totals: dict[str, int] = {}
    for route, by in emulator.stats()["routes"].items():
        if "/messages" not in route:
            continue
        for status, n in by.items():
            totals[status] = totals.get(status, 0) + n
    return totals


def daemon_by_status(samples: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for labels, value in samples.get("threadsync_requests_total", []):
        totals[labels["status"]] = totals.get(labels["status"], 0) + int(value)
    return totals


@pytest.mark.slow
def test_daemon_converges_under_faults_beside_other_commands_and_metrics_match(
    emulator: Emulator, emulator_url: str, tmp_path: Path
) -> None:
    """Faults on, messages arriving, `threads add`/`status`/`export` and a refused second daemon
    beside it: the export ends equal to the truth, the request counters equal the emulator's own
    counts, `check` passes while it runs, and SIGTERM ends it with exit 0."""
    db_url = f"sqlite:///{tmp_path / 'mirror.db'}"
    ids = emulator.seed(seed=1, threads=6, messages=40)
    track(db_url, ids[:4])
    emulator.add_fault(FaultRule("503", times=None, probability=0.1, route="list"))
    emulator.add_fault(FaultRule("500", times=None, probability=0.1, route="get"))
    emulator.add_fault(FaultRule("429", times=4, retry_after=0.1))
    env = env_for(emulator_url, emulator, db_url, THREADSYNC_DAEMON__HEALTH_PORT="0")
    daemon = DaemonProcess(env, tmp_path / "daemon.log")
    mirror = Mirror(db_url)
    try:
        port = daemon.wait_event("daemon.health_listening")["port"]
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(base + "/readyz").status_code == 200, 20, "readyz", daemon)
        for thread_id in ids:
            emulator.append_messages(thread_id, n=2)
        # Other commands on the same mirror while the daemon writes (started together: each
        # CLI start costs seconds on a loaded CI machine).
        beside = {
            "add": cli_start(env, "threads", "add", *ids[4:]),
            "status": cli_start(env, "status", "--json"),
            "export": cli_start(env, "export", "--out", str(tmp_path / "export.jsonl")),
            "second": cli_start(env, "run"),
            "check": cli_start(env, "check"),
        }
        for round_ in range(3):
            for thread_id in ids:
                emulator.append_messages(thread_id, n=2)
            time.sleep(0.3 * round_)  # let messages arrive while dispatch cycles run
        results = {name: finish(proc) for name, proc in beside.items()}
        for name in ("add", "status", "export", "check"):
            assert results[name][0] == 0, (name, results[name][1])
        code, stderr = results["second"]
        assert code == 2
        assert "another threadsync daemon" in stderr
        assert f"pid {daemon.proc.pid}" in stderr
        emulator.clear_faults()
        wait_for(lambda: exported(mirror) == truth(emulator), 30, "export == truth", daemon)
        assert set(exported(mirror)) == set(ids)
        # Quiesce: pause every thread (another writer beside the daemon), then the counters must
        # settle equal.
        with mirror.write() as session:
            assert sorted(remove_threads(session, ids)) == sorted(ids)

        def counters_match() -> bool:
            samples = metric_samples(httpx.get(base + "/metrics").text)
            return daemon_by_status(samples) == emulator_by_status(emulator)

        wait_for(counters_match, 20, "metrics == emulator stats", daemon)
        samples = metric_samples(httpx.get(base + "/metrics").text)
        seen = emulator_by_status(emulator)
        throttled = sum(v for _, v in samples["threadsync_throttled_total"])
        retries = sum(v for _, v in samples["threadsync_retries_total"])
        assert throttled == seen.get("429", 0) == 4
        assert retries == sum(n for status, n in seen.items() if status != "200")
        added_total = sum(
            v
            for labels, v in samples["threadsync_messages_mirrored_total"]
            if labels["change"] == "added"
        )
        assert added_total == sum(len(m) for m in truth(emulator).values())
        assert httpx.get(base + "/healthz").status_code == 200
        assert daemon.terminate(timeout=15) == 0
    finally:
        daemon.close()
        mirror.dispose()


@pytest.mark.slow
def test_sigterm_mid_sync_exits_0_and_a_following_sync_completes(
    emulator: Emulator, emulator_url: str, tmp_path: Path
) -> None:
    """SIGTERM while pages are being written: exit 0 within the timeout, integrity ok, nothing
    half-done that a one-shot `threadsync sync` cannot finish."""
    db_file = tmp_path / "mirror.db"
    db_url = f"sqlite:///{db_file}"
    ids = emulator.seed(seed=2, threads=4, messages=600)
    track(db_url, ids)
    emulator.faults.latency_ms = 15
    env = env_for(
        emulator_url,
        emulator,
        db_url,
        THREADSYNC_DAEMON__REQUESTS_PER_SECOND="8",
        THREADSYNC_DAEMON__SHUTDOWN_TIMEOUT="5",
    )
    daemon = DaemonProcess(env, tmp_path / "daemon.log")
    mirror = Mirror(db_url)
    try:

        def some_mirrored() -> bool:
            return 0 < message_count(mirror) < 4 * 600

        wait_for(some_mirrored, 30, "a sync in progress", daemon)
        code = daemon.terminate(timeout=15)
        # Exit 0, not 1: the running syncs unwound within daemon.shutdown_timeout (5 s), as the
        # daemon itself judged it on its own clock; no wall time is measured here.
        assert code == 0, daemon.log_file.read_text()[-2000:]
        events = [e["event"] for e in daemon.events()]
        assert "daemon.stopped" in events
        assert "daemon.shutdown_timeout" not in events
    finally:
        daemon.close()
        mirror.dispose()
    with sqlite3.connect(db_file) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert message_count(Mirror(db_url)) < 4 * 600
    emulator.faults.latency_ms = 0
    report = anyio.run(one_shot_sync, emulator_url, emulator, db_url)
    assert report.ok, report.failed
    assert exported(Mirror(db_url)) == truth(emulator)
