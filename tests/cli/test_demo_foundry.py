"""scripts/demo-foundry.sh runs end to end: the foundry profile with managed-identity tokens
against the emulator, a key refused, an export equal to the truth."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_foundry_script(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("THREADSYNC_", "AZURE_", "OPENAI_", "IDENTITY_", "IMDS_", "MSI_"))
    }
    env["DEMO_DIR"] = str(tmp_path / "demo")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo-foundry.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "Unauthorized. Access token is missing" in out
    assert "exit code: 2" in out
    assert "tokens issued: 1\n" in out
    assert "refused: 2" in out
    assert "OK: 375 messages in 3 threads" in out
    assert (tmp_path / "demo" / "messages.jsonl").is_file()
