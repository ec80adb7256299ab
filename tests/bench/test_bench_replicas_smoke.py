"""Smoke run of the replicas benchmark at a tiny scale: it runs end to end and reports figures.

Timings are never judged here (a shared machine); ``make bench`` is where they are read.
"""

from __future__ import annotations

import math

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
