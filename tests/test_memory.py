"""The entry point's memory tuning: malloc arenas (on glibc, never over the user's own setting)
and the cycle collector's thresholds."""

from __future__ import annotations

import gc
import platform

import pytest

from worker.memory import YOUNG_COLLECTION_EVERY, limit_malloc_arenas, tune_collector


def test_users_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False


def test_applied_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt arenas are a glibc feature")
    assert limit_malloc_arenas() is True


def test_collector_tuned_and_previous_thresholds_returned() -> None:
    before = gc.get_threshold()
    try:
        previous = tune_collector()
        assert previous == before
        assert gc.get_threshold() == (YOUNG_COLLECTION_EVERY, before[1], before[2])
        assert gc.get_freeze_count() > 0  # start-up objects out of the collector's sight
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
        gc.freeze()  # the session's own tuning (tests/conftest.py) froze what was alive, as here
