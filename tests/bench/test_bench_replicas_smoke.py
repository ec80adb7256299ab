"""Smoke run of the replicas benchmark at a tiny scale: it runs end to end and reports figures.

Timings are never judged here (a shared machine); ``make bench`` is where they are read.
"""

from __future__ import annotations

import math
import re

import pytest

from bench import bench_replicas

pytestmark = pytest.mark.slow


def test_bench_replicas_produces_every_figure(monkeypatch: pytest.MonkeyPatch, pg_url: str) -> None:
    del pg_url  # only for its check that PostgreSQL is there (skip or fail otherwise)
    monkeypatch.setenv("THREADSYNC_BENCH_SCALE", "0.02")
    figures = bench_replicas.main()
    assert figures["threads"] == 4.0
    for name in ("one_replica_s", "two_replicas_s", "speedup"):
        assert math.isfinite(figures[name])
        assert figures[name] > 0, name


def test_bench_replicas_pairs_and_timelines(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], pg_url: str
) -> None:
    """Two pairs of runs; each run's timeline accounts for every thread, split over its replicas."""
    del pg_url
    monkeypatch.setenv("THREADSYNC_BENCH_SCALE", "0.02")
    monkeypatch.setenv("THREADSYNC_BENCH_REPEAT", "2")
    figures = bench_replicas.main()
    assert figures["pairs"] == 2.0
    out = capsys.readouterr().out
    runs = re.split(r"^\d replica\(s\): done .*$", out, flags=re.MULTILINE)[1:]
    assert len(runs) == 4
    for run, replicas in zip(runs, (1, 2, 1, 2), strict=True):
        served = [
            int(n) for n in re.findall(r"^  replica \d: .* threads (\d+) ", run, re.MULTILINE)
        ]
        assert len(served) == replicas
        assert sum(served) == 4
