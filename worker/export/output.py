"""Atomic outputs: write to a temporary file beside the target, then rename into place.

A failed or interrupted export never leaves a half file under the target name. ``-`` is stdout.
A target ending in ``.gz`` is gzip-compressed. The file is flushed behind as it grows (see
:mod:`worker.files`), so the closing fsync does not wait for the whole export at once.
"""

from __future__ import annotations

import gzip
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from worker.errors import ConfigError
from worker.files import open_flushing


@contextmanager
def atomic_output(target: str | Path, *, mode: int = 0o600) -> Iterator[IO[bytes]]:
    """A binary stream that becomes ``target`` only if the block finishes without an exception."""
    if str(target) == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    path = Path(target)
    if path.is_dir():
        raise ConfigError(f"--out {path} is a directory; name a file (or `-` for stdout)")
    if not path.parent.exists():
        raise ConfigError(f"--out {path}: the directory {path.parent} does not exist")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, mode)
        with open_flushing(fd) as raw:
            if path.suffix == ".gz":
                with gzip.GzipFile(fileobj=raw, mode="wb", filename="", mtime=0) as gz:
                    yield gz  # type: ignore[misc]
            else:
                yield raw
            raw.flush()
            os.fsync(raw.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
