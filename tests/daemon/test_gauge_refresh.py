"""The thread-state gauge reads the whole mirror: the heartbeat reads it again only once 50 times
its last read's duration has passed."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker.config import DaemonSettings, Settings
from worker.daemon.lifecycle import Daemon
from worker.daemon.metrics import THREAD_COUNTS_COST_RATIO, DaemonMetrics, Refresh
from worker.emulator import Emulator, ManualClock
from worker.store.db import Mirror
from worker.store.repo import add_threads
from worker.testing import emulated_client

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.at = 1000.0

    def __call__(self) -> float:
        return self.at


def test_a_refresh_waits_ratio_times_what_the_last_read_took() -> None:
    clock = Clock()
    refresh = Refresh(50.0, clock)
    assert refresh.due()  # never read: at once
    refresh.took(1.2)
    assert not refresh.due()
    clock.at += 59.9
    assert not refresh.due()
    clock.at += 0.1
    assert refresh.due()
    refresh.took(0.001)  # a small mirror: read again at the next beat
    clock.at += 10.0
    assert refresh.due()


def _gauges(metrics: DaemonMetrics) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == "threadsync_threads":
                out[s.labels["state"]] = s.value
    return out


async def test_the_heartbeat_reads_the_thread_counts_only_when_due(mirror: Mirror) -> None:
    with mirror.write() as session:
        add_threads(session, ["thread_a"])
    settings = Settings(database_url=mirror.safe_url, daemon=DaemonSettings())
    metrics = DaemonMetrics()
    clock = Clock()
    async with emulated_client(Emulator(clock=ManualClock(), seed=1)) as client:
        daemon = Daemon(settings, mirror, client, metrics=metrics, clock=clock)
        await daemon.beat()
        assert _gauges(metrics)["active"] == 1
        with mirror.write() as session:
            add_threads(session, ["thread_b", "thread_c"])
        await daemon.beat()  # at the same instant: not due yet
        assert daemon.beat_error is None
        assert _gauges(metrics)["active"] == 1
        assert daemon.last_beat == clock.at  # the beat itself was written
        clock.at += THREAD_COUNTS_COST_RATIO * 3600  # far past any read's cost
        await daemon.beat()
        assert _gauges(metrics)["active"] == 3
        assert _gauges(metrics)["never_synced"] == 3
