"""Export outputs: a file, a directory of files (one per thread), or stdout.

How each kind of path is written (a regular file atomically, a symlink followed, a FIFO or a
device as a stream, ``-`` as stdout) is :func:`worker.files.output_file`'s; a directory is built
aside and appears whole (:func:`worker.files.output_directory`). A name ending in ``.gz`` is
gzip-compressed. Files are flushed behind as they grow (see :mod:`worker.files`), so the closing
fsync does not wait for the whole export at once.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from worker.files import new_file, output_directory, output_file

__all__ = ["atomic_output", "directory_output", "new_output"]


@contextmanager
def atomic_output(target: str | Path, *, mode: int = 0o600) -> Iterator[IO[bytes]]:
    """A binary stream into ``target``; a regular file or a new path becomes ``target`` only if
    the block finishes without an exception."""
    with output_file(target, mode=mode) as raw, _compressed(raw, str(target)) as stream:
        yield stream


@contextmanager
def new_output(path: Path) -> Iterator[IO[bytes]]:
    """A file of a directory being built by :func:`directory_output`."""
    with new_file(path) as raw, _compressed(raw, path.name) as stream:
        yield stream


directory_output = output_directory


@contextmanager
def _compressed(raw: IO[bytes], name: str) -> Iterator[IO[bytes]]:
    if not name.endswith(".gz"):
        yield raw
        return
    with gzip.GzipFile(fileobj=raw, mode="wb", filename="", mtime=0) as gz:
        yield gz  # type: ignore[misc]
