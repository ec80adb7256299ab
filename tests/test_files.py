"""Flush-behind files: every byte written, and the writeback of each full stretch started as it
is written (so the closing fsync only waits for the tail)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from worker import files


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
