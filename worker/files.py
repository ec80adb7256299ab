"""Large files written for the user without one long stall at the end.

A JSONL export or a backup of a million messages writes 0.7-2 GB, and each is fsynced before it
counts as written. Left alone, the kernel keeps most of it dirty in the page cache, and the final
fsync waits for all of it at once: in bench_export the export's time moved by 2x from run to run
with the disk's mood. A :class:`FlushBehind` file asks the kernel to start writing back each
stretch of :data:`FLUSH_EVERY` bytes as soon as it is written (``sync_file_range`` with
``SYNC_FILE_RANGE_WRITE``: asynchronous, pages stay cached for whoever reads the file next), as
PostgreSQL does for its own large writes; the final fsync then only waits for the tail.
Where ``sync_file_range`` does not exist (not Linux), the file is a plain one.
"""

from __future__ import annotations

import ctypes
import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

FLUSH_EVERY = 16 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2  # from linux/fs.h
BUFFER = 1024 * 1024


def _sync_file_range() -> Callable[[int, int, int], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        func: Any = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    func.restype = ctypes.c_int

    def start_writeback(fd: int, offset: int, length: int) -> None:
        # A hint: if the kernel refuses it (EINVAL on some file systems), fsync still does all.
        func(fd, offset, length, _SYNC_FILE_RANGE_WRITE)

    return start_writeback


_start_writeback = _sync_file_range()


class FlushBehind(io.FileIO):
    """A raw file that starts the writeback of every :data:`FLUSH_EVERY` bytes written."""

    def __init__(self, file: int | str | Path, mode: str = "wb", *, closefd: bool = True) -> None:
        super().__init__(file, mode, closefd=closefd)
        self.written = 0
        self._flushed = 0  # writeback was started for everything before this offset

    def write(self, b: Any) -> int:
        n = super().write(b)
        if n:
            self.written += n
            if _start_writeback is not None and self.written - self._flushed >= FLUSH_EVERY:
                _start_writeback(self.fileno(), self._flushed, self.written - self._flushed)
                self._flushed = self.written
        return n or 0


def open_flushing(file: int | str | Path) -> io.BufferedWriter:
    """``open(file, "wb")`` (a path, or a descriptor it takes over), flushed behind."""
    return io.BufferedWriter(FlushBehind(file, "wb"), buffer_size=BUFFER)
