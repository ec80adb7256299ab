"""Acceptance: hostile pages as a user meets them, the faults set over the emulator's HTTP
control plane. One clear line and exit 1 for a malformed message, never a traceback or its
content; a page listing one message twice syncs (exit 0), and every export still works."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.harness import run, served, truth_lines, user_env
from worker.emulator import Emulator

__all__ = ["served"]  # the fixture, imported to be used here

SECRET = "the words the user typed"


def test_a_malformed_page_exits_1_with_one_line_and_a_duplicate_syncs(
    served: tuple[Emulator, str], tmp_path: Path
) -> None:
    emulator, url = served
    bad, good = emulator.seed(seed=2, threads=2, messages=12)
    env = user_env(url, tmp_path / "m.db")
    run(["threads", "add", bad, good], env, tmp_path)
    rules = [
        {"fault": "malform", "route": "list", "thread_id": bad, "index": 4, "times": None,
         "fields": {"content": SECRET}},
        {"fault": "duplicate", "route": "list", "thread_id": good, "index": 0},
    ]  # fmt: skip
    for rule in rules:
        assert httpx.patch(f"{url}/_emulator/faults", json=rule).status_code == 200
    victim = emulator.truth()["threads"][bad][-5]["id"]  # item 4 of a newest-first page

    sync = run(["sync"], env, tmp_path, check=False)
    assert sync.returncode == 1
    output = sync.stdout + sync.stderr
    assert "Traceback" not in output
    assert SECRET not in output
    # The summary (stdout) groups failures by cause, then names each thread and its error.
    lines = [line for line in sync.stdout.splitlines() if line.strip().startswith(f"{bad}: ")]
    assert len(lines) == 1
    assert f"message {victim} (item 4 of a page) from the server is malformed: content" in lines[0]

    for fmt in ("jsonl", "csv", "markdown"):
        out = tmp_path / f"all.{fmt}"
        run(["export", "--format", fmt, "--out", str(out)], env, tmp_path)
    jsonl = (tmp_path / "all.jsonl").read_bytes().splitlines()
    assert len(jsonl) == len(truth_lines(emulator, [good]))  # the good thread, each id once

    assert httpx.delete(f"{url}/_emulator/faults").status_code == 200
    assert run(["sync"], env, tmp_path).returncode == 0  # the server mends its ways
