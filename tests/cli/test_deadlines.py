"""`threadsync sync` against a server that never finishes an answer, over a real loopback socket:
``api.request_timeout`` ends each request, ``--deadline`` ends the run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import KEY, run, user_env
from worker.emulator import Emulator, FaultRule, serve_in_thread


@pytest.fixture
def served() -> Iterator[tuple[Emulator, str]]:
    emulator = Emulator(api_key=KEY, seed=3)
    with serve_in_thread(emulator, log_level="critical") as url:
        yield emulator, url


def test_a_trickling_server_fails_the_sync_with_the_request_deadline(
    served: tuple[Emulator, str], tmp_path: Path
) -> None:
    """One byte every 50 ms never trips the 60 s read timeout; the 0.5 s request deadline ends
    each attempt, the retries are spent, the thread fails (exit 1) saying why."""
    emulator, url = served
    slow, fine = emulator.seed(seed=5, threads=2, messages=30)
    emulator.add_fault(
        FaultRule(fault="trickle", times=None, route="list", thread_id=slow, byte_interval_ms=50)
    )
    env = user_env(url, tmp_path / "m.db")
    env.update(THREADSYNC_API__REQUEST_TIMEOUT="500ms", THREADSYNC_RETRY__MAX_ATTEMPTS="2")
    run(["threads", "add", slow, fine], env, tmp_path)
    proc = run(["--log-level", "error", "sync"], env, tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "1/2 threads ok" in proc.stdout
    assert "request exceeded api.request_timeout (0.5 s)" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_deadline_ends_the_run_and_names_threads_not_reached(
    served: tuple[Emulator, str], tmp_path: Path
) -> None:
    emulator, url = served
    ids = emulator.seed(seed=6, threads=3, messages=10)
    emulator.add_fault(
        FaultRule(
            fault="trickle", times=None, route="list", thread_id=ids[0], byte_interval_ms=60_000
        )
    )
    env = user_env(url, tmp_path / "m.db")
    run(["threads", "add", *ids], env, tmp_path)
    proc = run(
        ["--log-level", "error", "sync", "--concurrency", "1", "--deadline", "1s"],
        env,
        tmp_path,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "deadline 1 s reached: 2 threads not reached, 1 stopped mid-pass" in proc.stdout
    assert "failed: 2 threads: not reached" in proc.stdout  # grouped by cause
    for thread_id in ids[1:]:
        assert f"{thread_id}: deadline (1 s): the run ended before this thread began" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_a_bad_deadline_is_a_usage_error(tmp_path: Path) -> None:
    env = user_env("http://127.0.0.1:9", tmp_path / "m.db")
    proc = run(["sync", "--deadline", "soon"], env, tmp_path, check=False)
    assert proc.returncode == 2
    assert "--deadline: 'soon' is not a duration" in proc.stderr
    assert "Traceback" not in proc.stderr
