"""bench_migrate end to end at a tiny scale: the figures come back, and the request count is
exactly one create per thread plus one append per further 20 messages on Foundry, and one
empty create plus one append per 20 (or part) on OpenAI (timings not judged)."""

from __future__ import annotations

import pytest

from bench import bench_migrate

pytestmark = pytest.mark.slow


def test_bench_migrate_produces_every_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THREADSYNC_BENCH_SCALE", "0.01")
    figures = bench_migrate.main()
    assert figures["threads"] == 10
    assert figures["requests"] == figures["expected_requests"] == 30
    # OpenAI cannot list conversations, so its create is empty (a lost one must hold nothing):
    # 10 threads x (1 create + 3 appends of 20, 20 and 10).
    assert figures["openai_requests"] == figures["openai_expected_requests"] == 40
    assert figures["openai_peak_rss_mib"] > 0
    assert figures["peak_rss_mib"] > 0
    assert figures["achieved_rate"] > 0
