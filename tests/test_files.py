"""Flush-behind files: every byte written, and the writeback of each full stretch started as it
is written (so the closing fsync only waits for the tail)."""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import sys
from pathlib import Path

import pytest

from worker import files
from worker.emulator import Emulator, persistence
from worker.errors import OutputError


def test_writeback_started_for_each_stretch_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[int, int]] = []
    monkeypatch.setattr(files, "FLUSH_EVERY", 100)
    monkeypatch.setattr(files, "_start_writeback", lambda _fd, off, n: started.append((off, n)))
    target = tmp_path / "out.jsonl"
    chunks = [bytes([65 + i % 26]) * size for i, size in enumerate([60, 60, 30, 250, 10, 5])]
    with files.open_flushing(target) as fh:
        for chunk in chunks:
            fh.write(chunk)
            fh.flush()  # hand each chunk to the raw file, as a full buffer would
    assert target.read_bytes() == b"".join(chunks)
    # Started once 100 bytes were waiting: at 120, at 400; the last 15 are left to fsync.
    assert started == [(0, 120), (120, 280)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_the_kernel_call_is_found_and_accepted(tmp_path: Path) -> None:
    assert files._start_writeback is not None
    with files.open_flushing(tmp_path / "big.bin") as fh:
        fh.write(b"x" * (files.FLUSH_EVERY + 1))
        fh.flush()
        assert fh.raw.written == files.FLUSH_EVERY + 1  # type: ignore[attr-defined]
    assert (tmp_path / "big.bin").stat().st_size == files.FLUSH_EVERY + 1


# -- output_file: how each kind of path is written ------------------------------------------------


def test_a_new_file_appears_whole_owner_only_and_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "new.bin"
    with files.output_file(target) as out:
        out.write(b"abc")
        assert not target.exists()  # built aside until the block ends
    assert target.read_bytes() == b"abc"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["new.bin"]


def test_a_failed_block_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "keep.bin"
    target.write_bytes(b"old")

    def failing_export() -> None:
        with files.output_file(target) as out:
            out.write(b"new")
            raise RuntimeError("the export failed")

    with pytest.raises(RuntimeError):
        failing_export()
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["keep.bin"]


def test_a_chain_of_links_is_followed_to_the_file(tmp_path: Path) -> None:
    real = tmp_path / "real.bin"
    real.write_bytes(b"old")
    (tmp_path / "one").symlink_to("real.bin")
    (tmp_path / "two").symlink_to(tmp_path / "one")
    with files.output_file(tmp_path / "two") as out:
        out.write(b"new")
    assert real.read_bytes() == b"new"
    assert os.readlink(tmp_path / "two") == str(tmp_path / "one")
    assert os.readlink(tmp_path / "one") == "real.bin"


def test_a_link_loop_and_a_missing_directory_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with (
        pytest.raises(OutputError, match="too many symbolic links"),
        files.output_file(tmp_path / "a"),
    ):
        pass
    missing = tmp_path / "nowhere" / "x.jsonl"
    with (
        pytest.raises(OutputError, match="its directory does not exist"),
        files.output_file(missing),
    ):
        pass


def test_emulator_state_saved_through_a_link_keeps_the_link(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    link = tmp_path / "emulator.json"
    link.symlink_to(tmp_path / "state" / "v1.json")
    emulator = Emulator(seed=1)
    emulator.seed(threads=1, messages=2)
    persistence.save(emulator, link)
    assert link.is_symlink()
    assert (tmp_path / "state" / "v1.json").stat().st_size > 0


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may give a file to another user")
def test_a_replaced_file_keeps_its_owner_and_mode(tmp_path: Path) -> None:
    target = tmp_path / "theirs.jsonl"
    target.write_bytes(b"old")
    os.chown(target, 1234, 5678)
    target.chmod(0o644)
    with files.output_file(target) as out:
        out.write(b"new")
    after = target.stat()
    assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (1234, 5678, 0o644)
    assert target.read_bytes() == b"new"


def test_disk_trouble_is_found_behind_wrappers_and_only_there() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = 13
    try:
        try:
            raise full
        except sqlite3.Error as exc:
            raise RuntimeError("the copy failed") from exc
    except RuntimeError as wrapped:
        found = files.disk_trouble(wrapped)
    assert found is not None
    assert found.errno == errno.ENOSPC
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    assert files.disk_trouble(refused) is None
