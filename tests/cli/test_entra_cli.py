"""`api.auth = entra` from the command line: without azure-identity, one line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

HIDE_AZURE_IDENTITY = (
    "import sys; sys.modules['azure.identity.aio'] = None; "
    "from worker.cli import main; sys.argv = ['threadsync', *sys.argv[1:]]; main()"
)


def test_entra_without_the_extra_stops_at_start_naming_it(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("THREADSYNC_", "AZURE_", "OPENAI_"))
    }
    db = tmp_path / "mirror.db"
    env.update(
        THREADSYNC_API__PROFILE="foundry",
        THREADSYNC_API__ENDPOINT="https://hub.services.ai.azure.com/api/projects/p",
        THREADSYNC_API__AUTH="entra",
        THREADSYNC_DATABASE_URL=f"sqlite:///{db}",
    )
    proc = subprocess.run(
        [sys.executable, "-c", HIDE_AZURE_IDENTITY, "sync"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()  # off a terminal: one cli.notice JSON record
    record = orjson.loads(line)
    assert (record["event"], record["level"]) == ("cli.notice", "error")
    assert record["message"] == (
        "api.auth=entra needs azure-identity, which is not installed: pip install"
        " 'threadsync[azure]'"
    )
    assert "Traceback" not in proc.stderr
