"""Kept for imports written before :mod:`worker.testing` held every fake: use that instead."""

from worker.testing import FakeClock

__all__ = ["FakeClock"]
