"""Where an export goes is written as its kind asks: a regular file or a new path atomically, a
symlink followed (the link kept), a FIFO or a device in place as a stream, stdout as a stream; a
full or read-only file system is one line and exit 2, with nothing replaced or left behind. A
directory export appears whole or not at all."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from tests.filesystems import fill, remount_read_only, tmpfs
from worker import files
from worker.cli import export as export_cli
from worker.cli.app import app
from worker.emulator import Emulator, ManualClock
from worker.errors import OutputError
from worker.store.db import Mirror
from worker.store.repo import add_threads
from worker.sync.runner import sync_threads
from worker.testing import emulated_client

pytestmark = pytest.mark.anyio


@pytest.fixture
async def synced(mirror: Mirror, mirror_url: str) -> tuple[Emulator, list[str], str]:
    emulator = Emulator(clock=ManualClock(), seed=5)
    ids = emulator.seed(seed=12, threads=3, messages=30)
    with mirror.write() as session:
        add_threads(session, ids)
    async with emulated_client(emulator) as client:
        assert (await sync_threads(client, mirror)).ok
    return emulator, ids, mirror_url


def export(url: str, *args: str) -> Any:
    return CliRunner().invoke(app, ["--database-url", url, "export", *args])


def truth_lines(emulator: Emulator, ids: list[str]) -> list[Any]:
    return [m for t in ids for m in emulator.truth()["threads"][t]]


def lines(data: bytes) -> list[Any]:
    return [orjson.loads(line) for line in data.splitlines()]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def one_error_line(result: Any) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    [line] = [x for x in result.output.splitlines() if x.strip()]
    return str(line)


# -- special files --------------------------------------------------------------------------------


async def test_a_fifo_is_written_in_place(
    synced: tuple[Emulator, list[str], str], tmp_path: Path
) -> None:
    emulator, ids, url = synced
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    received = bytearray()

    def read() -> None:
        with fifo.open("rb") as fh:
            received.extend(fh.read())

    reader = threading.Thread(target=read)
    reader.start()
    result = export(url, "-o", str(fifo))
    reader.join()
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert lines(bytes(received)) == truth_lines(emulator, ids)
    assert leftovers(tmp_path) == []


async def test_a_symlink_is_followed_and_kept(
    synced: tuple[Emulator, list[str], str], tmp_path: Path
) -> None:
    """The link's target is replaced atomically beside itself, keeping its mode; the link stays."""
    emulator, ids, url = synced
    real = tmp_path / "data" / "export.jsonl"
    real.parent.mkdir()
    real.write_bytes(b"old\n")
    real.chmod(0o640)
    link = tmp_path / "latest.jsonl"
    link.symlink_to(Path("data") / "export.jsonl")
    result = export(url, "-o", str(link))
    assert result.exit_code == 0, result.output
    assert link.is_symlink()
    assert os.readlink(link) == str(Path("data") / "export.jsonl")
    assert lines(real.read_bytes()) == truth_lines(emulator, ids)
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert leftovers(real.parent) == []
    # A dangling link creates its target.
    dangling = tmp_path / "next.jsonl"
    dangling.symlink_to(tmp_path / "data" / "new.jsonl")
    assert export(url, "-o", str(dangling)).exit_code == 0
    assert dangling.is_symlink()
    assert lines((tmp_path / "data" / "new.jsonl").read_bytes()) == truth_lines(emulator, ids)


async def test_dev_null_stays_a_device(synced: tuple[Emulator, list[str], str]) -> None:
    _, _, url = synced
    before = os.stat("/dev/null")
    result = export(url, "-o", "/dev/null")
    assert result.exit_code == 0, result.output
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode)
    assert (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


async def test_dev_full_is_one_line_exit_2_and_stays_a_device(
    synced: tuple[Emulator, list[str], str],
) -> None:
    """Run as root this once turned /dev/full into a regular file holding every message."""
    _, _, url = synced
    before = os.stat("/dev/full")
    line = one_error_line(export(url, "-o", "/dev/full"))
    assert "cannot write /dev/full: No space left on device" in line
    assert "free some space or write elsewhere" in line
    after = os.stat("/dev/full")
    assert stat.S_ISCHR(after.st_mode)
    assert (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


async def test_dev_stdout_is_stdout(
    synced: tuple[Emulator, list[str], str], tmp_path: Path
) -> None:
    emulator, ids, url = synced
    result = export(url, "-o", "/dev/stdout")
    assert result.exit_code == 0, result.output
    assert lines(result.stdout_bytes) == truth_lines(emulator, ids)
    assert stat.S_ISLNK(os.lstat("/dev/stdout").st_mode)


def test_an_own_descriptor_is_written_as_a_stream(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    try:
        with files.output_file(f"/dev/fd/{write_end}") as out:
            out.write(b"through the pipe\n")
        assert os.read(read_end, 100) == b"through the pipe\n"
        os.fstat(write_end)  # the caller's descriptor is still open
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize(("path", "kind"), [("/dev/loop0", "a block device"), (".", "directory")])
def test_what_cannot_hold_an_export_is_refused(path: str, kind: str, tmp_path: Path) -> None:
    target = tmp_path if path == "." else Path(path)
    if not target.exists():
        pytest.skip(f"{path} does not exist here")
    with pytest.raises(OutputError, match=kind), files.output_file(target) as out:
        out.write(b"x")


# -- failing file systems -------------------------------------------------------------------------


async def test_a_full_file_system_keeps_the_old_file(
    synced: tuple[Emulator, list[str], str], tmp_path: Path
) -> None:
    _, _, url = synced
    with tmpfs(tmp_path / "small", size="64k") as small:
        old = small / "export.jsonl"
        old.write_bytes(b"the previous export\n")
        fill(small)
        line = one_error_line(export(url, "-o", str(old)))
        assert f"cannot write {old}: No space left on device" in line
        assert "nothing was replaced" in line
        assert old.read_bytes() == b"the previous export\n"
        assert leftovers(small) == [".filler"]


async def test_a_read_only_file_system_is_one_line(
    synced: tuple[Emulator, list[str], str], tmp_path: Path
) -> None:
    _, _, url = synced
    with tmpfs(tmp_path / "ro") as ro:
        remount_read_only(ro)
        line = one_error_line(export(url, "-o", str(ro / "export.jsonl")))
        assert "Read-only file system; the file system is read-only: choose a writable" in line
        line = one_error_line(export(url, "-o", str(ro / "by-thread") + "/"))
        assert "Read-only file system" in line


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EIO])
async def test_a_failing_fsync_leaves_nothing_and_says_why(
    synced: tuple[Emulator, list[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    err: int,
) -> None:
    """The same at the boundary, wherever mounting is not allowed: the last step fails."""
    _, _, url = synced
    old = tmp_path / "export.jsonl"
    old.write_bytes(b"before\n")

    def failing(_fd: int) -> None:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "fsync", failing)
    line = one_error_line(export(url, "-o", str(old)))
    assert f"cannot write {old}: {os.strerror(err)}" in line
    assert old.read_bytes() == b"before\n"
    assert leftovers(tmp_path) == []


# -- directories ----------------------------------------------------------------------------------


async def test_a_directory_export_failing_part_way_leaves_no_partial_set(
    synced: tuple[Emulator, list[str], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New or existing, the directory is as it was: no thread's file, no hidden build."""
    _, ids, url = synced
    real = export_cli.WRITERS[export_cli.Format.JSONL]
    written: list[int] = []

    def second_fails(rows: Any, out: Any) -> int:
        if written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(real(rows, out))
        return written[-1]

    monkeypatch.setitem(export_cli.WRITERS, export_cli.Format.JSONL, second_fails)
    fresh = tmp_path / "fresh"
    line = one_error_line(export(url, "-o", f"{fresh}/"))
    assert f"cannot write {fresh}: No space left on device" in line
    assert "nothing was replaced" in line
    assert not fresh.exists()
    assert leftovers(tmp_path) == []

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / f"{ids[0]}.jsonl").write_bytes(b"earlier\n")
    written.clear()
    one_error_line(export(url, "-o", str(existing)))
    assert sorted(p.name for p in existing.iterdir()) == [f"{ids[0]}.jsonl"]
    assert (existing / f"{ids[0]}.jsonl").read_bytes() == b"earlier\n"


async def test_a_directory_export_into_an_existing_directory_replaces_only_its_files(
    synced: tuple[Emulator, list[str], str], tmp_path: Path
) -> None:
    emulator, ids, url = synced
    folder = tmp_path / "threads"
    folder.mkdir()
    (folder / "notes.txt").write_bytes(b"mine\n")
    (folder / f"{ids[0]}.jsonl").write_bytes(b"earlier\n")
    result = export(url, "-o", str(folder))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["notes.txt", *(f"{t}.jsonl" for t in ids)]
    )
    assert (folder / "notes.txt").read_bytes() == b"mine\n"
    for thread_id in ids:
        got = lines((folder / f"{thread_id}.jsonl").read_bytes())
        assert got == truth_lines(emulator, [thread_id])


async def test_a_thread_id_that_is_no_file_name_is_refused(
    synced: tuple[Emulator, list[str], str], tmp_path: Path
) -> None:
    _, _, url = synced
    before = sorted(os.listdir(tmp_path))
    line = one_error_line(export(url, "-o", f"{tmp_path}/out/", "-t", "../escape"))
    # Refused by whichever check meets it first (the id's syntax, the mirror not holding it,
    # the file name it would make): never written outside the directory.
    assert "../escape" in line
    assert sorted(os.listdir(tmp_path)) == before
