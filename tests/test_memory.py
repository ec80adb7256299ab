"""The entry point's malloc tuning: applied on glibc, and never over the user's own setting."""

from __future__ import annotations

import platform

import pytest

from worker.memory import limit_malloc_arenas


def test_users_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False


def test_applied_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt arenas are a glibc feature")
    assert limit_malloc_arenas() is True
