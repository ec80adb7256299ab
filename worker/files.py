"""Files written for the user: never a half file, never a special file replaced, and large ones
written without one long stall at the end.

A JSONL export or a backup of a million messages writes 0.7-2 GB, and each is fsynced before it
counts as written. Left alone, the kernel keeps most of it dirty in the page cache, and the final
fsync waits for all of it at once: the export's time follows the disk's mood (measured by
``bench_export``; README, "Benchmarks"). A :class:`FlushBehind` file asks the kernel to start
writing back each stretch of :data:`FLUSH_EVERY` bytes as soon as it is written
(``sync_file_range`` with ``SYNC_FILE_RANGE_WRITE``: asynchronous, pages stay cached for whoever
reads the file next), as PostgreSQL does for its own large writes; the final fsync then only
waits for the tail.
Where ``sync_file_range`` does not exist (not Linux), the file is a plain one.
"""

from __future__ import annotations

import ctypes
import errno
import io
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

from worker.errors import OutputError

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


# -- every file threadsync writes for the user ----------------------------------------------------
#
# What a path names decides how it is written, as mature tools do (GNU sort -o, rsync, editors):
#   * a regular file, or nothing yet: a temporary file beside it, fsynced, renamed over it (the
#     directory fsynced too); a failure leaves the old file (or nothing) in place. A file that
#     existed keeps its permission bits;
#   * a symbolic link: followed to its final target, which is then written by these rules (a
#     regular file there is replaced beside itself: the link stays a link);
#   * a character device (/dev/null, a terminal), a FIFO: opened and written in place as a
#     stream, never replaced (root replacing /dev/full with a regular file was a bug);
#   * ``-``, /dev/stdout, /dev/stderr, /dev/fd/N: this process's own descriptor, as a stream;
#   * a directory, a block device, a socket: refused.
# Failures of the file system (full, read-only, no permission) become one OutputError naming the
# path and what to do; the caller's exit code for it is 2, like any other bad destination.

STDOUT = "-"
_OWN_DESCRIPTOR = re.compile(r"^/(?:dev/fd|proc/self/fd|proc/(\d+)/fd)/(\d+)$")
_STANDARD = {"/dev/stdout": 1, "/dev/stderr": 2}
_MAX_LINKS = 40  # as the kernel's ELOOP bound

_ADVICE = {
    errno.ENOSPC: "the file system is full: free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is exhausted: free some space or write elsewhere",
    errno.EROFS: "the file system is read-only: choose a writable place",
    errno.EACCES: "permission denied: choose a place this user may write",
    errno.EPERM: "not permitted: choose a place this user may write",
    errno.ENOENT: "its directory does not exist: create it or choose another",
    errno.ENOTDIR: "a part of the path is not a directory: check the path",
    errno.EPIPE: "whatever was reading it went away",
    errno.EISDIR: "it is a directory: name a file",
    errno.ENXIO: "nothing is reading it (a FIFO needs a reader)",
    errno.EFBIG: "the file grew past what the file system allows: write elsewhere",
    errno.ELOOP: "too many symbolic links: check the path",
}


def write_failure(
    path: str | Path, exc: OSError, *, kept: bool = False, after: str = ""
) -> OutputError:
    """One line for a file system failure while writing ``path`` (``kept``: nothing was replaced,
    the previous file, if any, is as it was; ``after``: what else the user should know)."""
    advice = _ADVICE.get(exc.errno or 0, "choose another place")
    reason = exc.strerror or type(exc).__name__
    tail = "; nothing was replaced" if kept else ""
    return OutputError(f"cannot write {path}: {reason}; {advice}{tail}{after}")


# SQLite's primary result codes for a destination that cannot take the file, as the errno the
# same trouble has on a plain file (sqlite3.h: SQLITE_READONLY 8, IOERR 10, FULL 13, CANTOPEN 14).
_SQLITE_AS_ERRNO = {8: errno.EROFS, 10: errno.EIO, 13: errno.ENOSPC, 14: errno.EACCES}


# What a destination's file system answers when it cannot take a file (a refused connection
# somewhere below a database error is no such thing).
_DISK_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}
)


def disk_trouble(exc: BaseException) -> OSError | None:
    """The file system failure behind ``exc``, if any: an OSError, or SQLite's (possibly
    wrapped by SQLAlchemy or the store) turned into the OSError it stands for."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_ERRNOS:
            return current
        code = getattr(current, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in _SQLITE_AS_ERRNO:
            err = _SQLITE_AS_ERRNO[code & 0xFF]
            return OSError(err, os.strerror(err))
        orig = getattr(current, "orig", None)
        todo += [current.__cause__, current.__context__]
        if isinstance(orig, BaseException):
            todo.append(orig)
    return None


def _descriptor(path: str) -> int | None:
    """The descriptor ``path`` names when it is one of this process's own, else None."""
    if path in _STANDARD:
        return _STANDARD[path]
    match = _OWN_DESCRIPTOR.match(path)
    if match is None or (match.group(1) is not None and int(match.group(1)) != os.getpid()):
        return None
    return int(match.group(2))


def is_stdout(target: str | Path) -> bool:
    """Whether writing ``target`` writes this process's stdout (``-``, /dev/stdout, /dev/fd/1):
    then nothing else may be printed there."""
    if str(target) == STDOUT:
        return True
    try:
        return _follow(str(target))[1] == 1
    except OSError:
        return False


def _follow(path: str) -> tuple[str, int | None]:
    """Follow ``path``'s final symbolic links (stopping at a descriptor of this process):
    ``(the path reached, that descriptor or None)``."""
    here = os.path.abspath(path)
    for _ in range(_MAX_LINKS):
        fd = _descriptor(here)
        if fd is not None or not os.path.islink(here):
            return here, fd
        here = os.path.normpath(os.path.join(os.path.dirname(here), os.readlink(here)))
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)


@contextmanager
def output_file(target: str | Path, *, mode: int = 0o600) -> Iterator[BinaryIO]:
    """A binary stream into ``target``, written as its kind asks (see above). For a regular file
    or a new path, the file appears only if the block finishes without an exception."""
    name = str(target)
    try:
        if name == STDOUT:
            with _standard_stream(1) as stream:
                yield stream
            return
        where, fd = _follow(name)
        if fd is not None:
            with _descriptor_stream(fd) as stream:
                yield stream
            return
        kind = _kind(where)
        if kind == "stream":
            with _in_place(where) as stream:
                yield stream
            return
        if kind != "file":
            raise OutputError(
                f"cannot write {name}: it is {kind}; name a regular file, a FIFO, a character"
                f" device or {STDOUT} for stdout"
            )
    except OSError as exc:
        raise write_failure(name, exc) from None
    with _atomic(name, Path(where), mode) as stream:
        yield stream


def _kind(path: str) -> str:
    """``file`` (regular, or nothing yet), ``stream`` (character device, FIFO) or what else."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
        return "file"
    if stat.S_ISREG(st.st_mode):
        return "file"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return "stream"
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    if stat.S_ISBLK(st.st_mode):
        return "a block device"
    return "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file"


@contextmanager
def _standard_stream(fd: int) -> Iterator[BinaryIO]:
    """stdout or stderr as Python holds them (a test's capture included), flushed at the end."""
    stream = sys.stdout if fd == 1 else sys.stderr
    stream.flush()
    raw: Any = stream.buffer
    yield raw
    raw.flush()


@contextmanager
def _descriptor_stream(fd: int) -> Iterator[BinaryIO]:
    if fd in (1, 2):
        with _standard_stream(fd) as stream:
            yield stream
        return
    with io.BufferedWriter(io.FileIO(os.dup(fd), "wb"), buffer_size=BUFFER) as stream:
        yield stream


@contextmanager
def _in_place(path: str) -> Iterator[BinaryIO]:
    """A character device or a FIFO, opened as it is (a FIFO waits for its reader, as ``cat >
    fifo`` does); no temporary file, no rename, no fsync (a pipe has nothing to sync)."""
    fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    with io.BufferedWriter(io.FileIO(fd, "wb"), buffer_size=BUFFER) as stream:
        yield stream


@contextmanager
def _atomic(name: str, path: Path, mode: int) -> Iterator[BinaryIO]:
    """A temporary file beside ``path``, fsynced and renamed over it when the block finishes."""
    try:
        old: os.stat_result | None = path.stat()
    except FileNotFoundError:
        old = None
    except OSError as exc:
        raise write_failure(name, exc, kept=True) from None
    tmp: Path | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(tmp_name)
        _like(fd, old, mode)
        with open_flushing(fd) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        tmp.replace(path)
        tmp = None
        fsync_directory(path.parent)
    except OSError as exc:
        raise write_failure(name, exc, kept=tmp is not None) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _like(fd: int, old: os.stat_result | None, mode: int) -> None:
    """A replacement keeps the replaced file's permissions, and its owner when this process
    may set it (root); a new file gets ``mode``."""
    if old is None:
        os.fchmod(fd, mode)
        return
    if (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
        # Not root: the file becomes this user's, as any rewrite by them would.
        with suppress(PermissionError):
            os.fchown(fd, old.st_uid, old.st_gid)
    os.fchmod(fd, stat.S_IMODE(old.st_mode))


def fsync_directory(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def new_file(path: Path, *, mode: int = 0o600) -> Iterator[BinaryIO]:
    """A file that must not exist yet, inside a directory :func:`output_directory` is building
    (which names the user's directory when it fails), fsynced at the end."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with open_flushing(fd) as stream:
        yield stream
        stream.flush()
        os.fsync(stream.fileno())


@contextmanager
def output_directory(target: Path) -> Iterator[Path]:
    """A directory to fill; what it holds appears in ``target`` only if the block finishes.

    A new ``target`` is built beside itself (``.NAME.XXXX.partial``) and renamed into place: the
    set appears whole or not at all. Into an existing directory the files are built in a hidden
    ``.threadsync-XXXX.partial`` inside it (the same file system, so no copy), then each is
    renamed over its name: files of the same names are replaced, other files are left alone,
    and a failure before the end changes nothing there.
    """
    name = str(target)
    try:
        if target.is_dir():
            build = Path(tempfile.mkdtemp(prefix=".threadsync-", suffix=".partial", dir=target))
        else:
            if target.exists() or target.is_symlink():
                raise OutputError(f"cannot write {name}: it exists and is not a directory")
            target.parent.mkdir(parents=True, exist_ok=True)
            build = Path(
                tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
            )
    except OSError as exc:
        raise write_failure(name, exc) from None
    try:
        yield build
        _publish(build, target)
    except OSError as exc:
        raise write_failure(name, exc, kept=True) from None
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _publish(build: Path, target: Path) -> None:
    if build.parent == target:
        for entry in sorted(build.iterdir()):
            entry.replace(target / entry.name)
        fsync_directory(target)
        return
    fsync_directory(build)
    build.rename(target)
    fsync_directory(target.parent)
