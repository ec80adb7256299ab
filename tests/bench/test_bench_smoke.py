"""Smoke runs of the sync benchmarks at a tiny scale (``THREADSYNC_BENCH_SCALE=0.02``).

They pin that each benchmark runs end to end (emulator child, threadsync in process and as a
subprocess, the baseline and the floor) and returns its figures. Timings and targets are never
judged here: on a shared CI machine they mean nothing; ``make bench`` is where they are read.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from bench import bench_export, bench_import, bench_reconcile, bench_sync

pytestmark = pytest.mark.slow

SMOKE_SCALE = "0.02"


def _check_figures(figures: dict[str, float]) -> None:
    assert figures, "no figures"
    for name, value in figures.items():
        assert isinstance(value, float), name
        assert math.isfinite(value), name
    assert figures["scale"] == float(SMOKE_SCALE)


def _run(main: Callable[[], dict[str, float]], monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    monkeypatch.setenv("THREADSYNC_BENCH_SCALE", SMOKE_SCALE)
    return main()


def test_bench_sync_produces_every_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench_sync reports each phase's time, requests and messages, and the subprocess RSS."""
    figures = _run(bench_sync.main, monkeypatch)
    _check_figures(figures)
    threads = figures["threads"]
    messages = threads * figures["messages_per_thread"]
    for phase in ("baseline_initial", "initial_c8", "initial_c8_run2", "initial_c8_run3"):
        assert figures[f"{phase}_added"] == messages, phase
    assert figures["initial_c8_median_s"] > 0
    for phase in ("baseline_initial", "initial_c8", "initial_c16", "initial_cli"):
        assert figures[f"{phase}_added"] == messages, phase
        assert figures[f"{phase}_requests"] >= threads, phase
    assert figures["big_thread_cli_added"] == figures["big_thread_messages"]
    for phase in ("initial_cli", "idle_cli", "append_cli", "big_thread_cli"):
        assert figures[f"{phase}_rss_mib"] > 0, phase
    assert sum(1 for name in figures if name.startswith("target_")) == 8


def test_bench_reconcile_produces_every_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench_reconcile reports the reconcile, the bare listing it is judged against, the writes."""
    figures = _run(bench_reconcile.main, monkeypatch)
    _check_figures(figures)
    assert figures["pages"] >= figures["threads"]
    assert figures["reconcile_requests"] >= figures["pages"]
    assert figures["cli_full_rss_mib"] > 0
    assert figures["reconcile_median_s"] > 0
    assert figures["first_reconcile_over_listing"] > 0
    assert figures["no_memo_reconcile_over_listing"] > 0
    assert sum(1 for name in figures if name.startswith("target_")) == 8


def test_bench_export_produces_every_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench_export builds its mirror the way the current schema takes rows (it broke once when
    ``metadata`` became a generated column) and reports export, backup and verify figures."""
    monkeypatch.setattr(bench_export, "MESSAGES", 2_000)
    figures = bench_export.main()
    assert figures["messages"] == 2_000
    for name, value in figures.items():
        assert math.isfinite(value), name


def test_bench_import_produces_every_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench_import runs `threads add --from-file` fresh, again, and with bad lines skipped, on
    SQLite (and PostgreSQL when it answers), and times the ORM baseline."""
    figures = _run(bench_import.main, monkeypatch)
    _check_figures(figures)
    assert figures["ids"] == 2_000
    for name in ("fresh_s", "fresh_cpu_s", "already_tracked_s", "skip_invalid_s"):
        assert figures[f"sqlite_{name}"] > 0, name
    assert figures["sqlite_orm_baseline_scaled_s"] > 0
