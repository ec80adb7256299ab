"""Every test of the suite has exactly one tier (unit, integration, process): `make test-fast`
selects by tier, so a test with none would silently never run there, and one with two would be
counted twice in the tier figures."""

from __future__ import annotations

import gc
import re
import subprocess
import sys
from pathlib import Path

from tests.tiers import TIERS
from worker.memory import YOUNG_COLLECTION_EVERY

ROOT = Path(__file__).resolve().parents[1]
NOT_EXACTLY_ONE = " or ".join(
    [f"not ({' or '.join(TIERS)})"]
    + [f"({a} and {b})" for i, a in enumerate(TIERS) for b in TIERS[i + 1 :]]
)


def test_every_test_has_exactly_one_tier() -> None:
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", NOT_EXACTLY_ONE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    summary = collected.stdout.strip().splitlines()[-1]
    # Exit 5: nothing selected. Anything listed before the summary is a test with 0 or 2+ tiers.
    assert collected.returncode == 5, collected.stdout[-3000:] + collected.stderr[-3000:]
    selected = re.match(r"no tests collected \((\d+) deselected\)", summary)
    assert selected is not None, summary
    assert int(selected.group(1)) > 1000, summary  # the whole suite was looked at


def test_the_session_runs_with_the_collector_settings_of_the_cli() -> None:
    """tests/conftest.py applies worker.memory's tuning as `threadsync`'s entry point does."""
    assert gc.get_threshold()[0] == YOUNG_COLLECTION_EVERY
