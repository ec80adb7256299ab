"""Real file systems that fail: a tiny tmpfs that fills up, one mounted read-only.

Mounting needs root (CAP_SYS_ADMIN); where it is refused the tests using these are skipped, and
the mocked failures in the same files still run.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(path: Path, *, size: str = "256k") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``path`` (created) for the block; skip the test if refused."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0755"
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def remount_read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], capture_output=True, check=True)


def fill(path: Path) -> None:
    """Fill the file system holding ``path`` to the last byte."""
    fd = os.open(path / ".filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass  # ENOSPC: full
    finally:
        os.close(fd)
