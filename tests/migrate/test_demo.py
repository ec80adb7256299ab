"""`scripts/demo-migrate.sh` (run by `make demo`) migrates a demo mirror and verifies it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo-migrate.sh"


@pytest.mark.slow
def test_demo_migrate_script(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THREADSYNC_", "AZURE_"))}
    env["THREADSYNC_DEMO_DIR"] = str(tmp_path)
    proc = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3/3 threads ok; 135 items in 9 requests" in proc.stdout
    assert "0 items in 0 requests" in proc.stdout  # the second run sends nothing
    assert "verified 3 threads: 3 identical, 0 not" in proc.stdout
    rows = (tmp_path / "conversations.csv").read_text().splitlines()
    assert rows[0] == "thread_id,conversation_id,messages,items,migrated_at"
    assert len(rows) == 4
