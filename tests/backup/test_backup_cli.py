"""`threadsync backup`, `backup list`, `backup verify` and `restore` through the CLI: exit codes
and the sentence that says why."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from worker.backup.lock import backup_lock
from worker.cli.app import app
from worker.store.db import Mirror
from worker.store.models import TrackedThread


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_backup_list_verify_restore_and_a_busy_lock(tmp_path: Path) -> None:
    """A no-sync backup succeeds; a second while the lock is held exits 1 saying why; verify of
    the destination exits 0, then 1 naming the damaged file; restore refuses a non-empty target."""
    url = f"sqlite:///{tmp_path / 'm.db'}"
    Mirror(url).dispose()
    dest = tmp_path / "b"
    code, out = invoke("--database-url", url, "backup", "--dest", str(dest), "--no-sync")
    assert code == 0, out
    (snap,) = [p for p in dest.iterdir() if p.name.startswith("threadsync-")]
    with backup_lock(dest):
        code, out = invoke("--database-url", url, "backup", "--dest", str(dest), "--no-sync")
    assert code == 1
    assert "another backup" in out
    code, out = invoke("backup", "list", str(dest))
    assert code == 0
    assert snap.name in out
    assert invoke("backup", "verify", str(dest))[0] == 0
    mirror = Mirror(url)
    with mirror.write() as session:
        session.add(TrackedThread(thread_id="thread_x"))
    mirror.dispose()
    code, out = invoke("restore", str(snap), "--database-url", url)
    assert code == 2
    assert "--force" in out
    (snap / "messages.jsonl").write_bytes(b"{")
    code, out = invoke("backup", "verify", str(dest))
    assert code == 1
    assert "messages.jsonl" in out


def test_backup_without_a_destination_is_a_configuration_error(tmp_path: Path) -> None:
    """No --dest and no backup.dest: exit 2 and the option to set."""
    url = f"sqlite:///{tmp_path / 'm.db'}"
    Mirror(url).dispose()  # a backup needs a mirror to exist
    code, out = invoke("--database-url", url, "backup", "--no-sync")
    assert code == 2
    assert "--dest" in out
