"""bench_freshness end to end at a tiny size (2,000 rows, a few seconds, PostgreSQL): every figure
comes back and the run did real work (timings and targets are not judged here)."""

from __future__ import annotations

import math

import pytest

from bench import bench_freshness

pytestmark = pytest.mark.slow


def test_bench_freshness_produces_every_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THREADSYNC_BENCH_SCALE", "0.002")
    monkeypatch.setenv(bench_freshness.MINUTES_ENV, "0.15")
    monkeypatch.setattr("sys.argv", ["bench_freshness"])
    figures = bench_freshness.main()
    assert figures["threads"] == 2000
    assert all(isinstance(v, float) and math.isfinite(v) for v in figures.values())
    assert figures["requests"] > 0
    assert figures["daemon_peak_rss_mb"] > 0
    assert figures["daemon_cpu_s"] > 0
    assert figures["claim_explain_ms"] > 0
    assert figures["staleness_samples"] >= 0


def test_minutes_knob() -> None:
    assert bench_freshness.minutes(["--minutes", "2.5"]) == 2.5
    with pytest.raises(SystemExit, match="must be a number"):
        bench_freshness.minutes(["--minutes", "soon"])
