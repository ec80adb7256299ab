"""Proof (issue 21): three `threadsync run` replicas never exceed the global request budget.

The emulator serves 200 threads on a loopback socket and records each API request's arrival (its
own monotonic clock) and replica (``User-Agent: ... replica/<id>``). Three replicas share a budget
of 20 requests/s over far more due work than that serves (every thread due every 2 s). They start
one after another (each join shrinks the others' shares: the window this pins) and one is stopped
with SIGTERM in the middle of the run (the others' shares grow once it has gone).

Pinned: in every window of ``W`` seconds starting at a request, the emulator saw at most
``BUDGET * (W + JITTER) + BURST * k`` requests, ``k`` the replicas that ran (each pacer's bucket
holds ``BURST`` requests, granted again at each admission: ``worker/daemon/replicas.py``). The
budget was used (a test of a budget nobody reached would prove nothing), and every request named
its replica.

``JITTER`` is the witness's own error, not the replicas' allowance. The emulator stamps a request
when its event loop (a thread of this test's process) gets to it, not when a replica sent it: a
stall of that thread (descheduled on a loaded two-core machine, or waiting for the GIL behind
the test's polling) stamps what was sent during the stall at its end, so ``W`` seconds of
arrivals can hold ``W + stall`` seconds of sends. Allowed: a stall of up to 0.25 s (a few
scheduler periods and GIL switch intervals over), i.e. ``BUDGET * 0.25`` = 5 requests per
window. The check still fails the behaviour it was written against: before the budget was
shared across replicas, three of them sent 32 requests in one second, above this bound's 31.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from tests.harness import DaemonProcess, emulator_url, replicas_env, track, wait_for
from worker.emulator import Emulator

__all__ = ["emulator_url"]  # the fixture, imported to be used here

pytestmark = [pytest.mark.process, pytest.mark.slow]

BUDGET = 20.0  # requests per second, all replicas together
BURST = 2  # the pacer's bucket (worker/client/pacer.py: Pacer(burst=2))
WINDOWS = (1.0, 2.0, 5.0)  # seconds
JITTER = 0.25  # seconds: the longest stall of the emulator's thread allowed for (docstring)


@pytest.fixture
def emulator() -> Emulator:
    emulator = Emulator(seed=7)
    emulator.requests.start(200_000)
    return emulator


def budget_env(emulator_url: str, emulator: Emulator, db_url: str) -> dict[str, str]:
    return replicas_env(
        emulator_url,
        emulator,
        db_url,
        ttl=12,
        THREADSYNC_DAEMON__MAX_REQUESTS_PER_SECOND=str(BUDGET),
        THREADSYNC_DAEMON__SYNC_INTERVAL="2",
        THREADSYNC_DAEMON__DISPATCH_INTERVAL="0.5",
        THREADSYNC_SYNC__PAGE_LIMIT="5",
        THREADSYNC_SYNC__CONCURRENCY="4",
    )


def sent_by(emulator: Emulator, replica: str) -> int:
    return sum(1 for _, r in emulator.requests.entries() if r == replica)


def sending(emulator: Emulator, replica: str, at_least: int) -> bool:
    return sent_by(emulator, replica) >= at_least


def most_in_window(times: list[float], width: float) -> int:
    """The most requests in any window ``[t, t + width]`` starting at a request."""
    most, end = 0, 0
    for start, at in enumerate(times):
        while end < len(times) and times[end] <= at + width:
            end += 1
        most = max(most, end - start)
    return most


def test_three_replicas_joining_and_leaving_stay_within_the_budget(
    emulator: Emulator, emulator_url: str, pg_url: str, tmp_path: Path
) -> None:
    ids = emulator.seed(seed=3, threads=200, messages=30)
    track(pg_url, ids)
    env = budget_env(emulator_url, emulator, pg_url)
    daemons: list[DaemonProcess] = []
    names: list[str] = []
    try:
        for i in range(3):  # one after another: each joins replicas already spending
            daemons.append(DaemonProcess(env, tmp_path / f"r{i}.log"))
            names.append(str(daemons[i].wait_event("daemon.replica_registered")["replica"]))
            wait_for(partial(sending, emulator, names[i], 60), 90, f"r{i} sending", daemons[i])
        leaving = daemons[1]
        assert leaving.terminate(timeout=30) == 0  # mid-run: its share goes to the others
        before = {n: sent_by(emulator, n) for n in (names[0], names[2])}
        wait_for(
            lambda: all(sent_by(emulator, n) >= before[n] + 60 for n in before),
            90,
            "the two left sending",
            daemons[0],
        )
        rejoins = sum(
            1 for d in daemons for e in d.events() if e.get("event") == "daemon.budget_rejoin"
        )
    finally:
        for daemon in daemons:
            daemon.close()
    entries = emulator.requests.entries()
    assert {r for _, r in entries} == set(names)  # every request named its replica
    times = [at for at, _ in entries]
    admissions = len(names) + rejoins
    for width in WINDOWS:
        bound = BUDGET * (width + JITTER) + BURST * admissions
        most = most_in_window(times, width)
        assert most <= bound, f"{most} requests in {width:g} s, budget bound {bound:g}"
    # Saturated: over some 5 s the replicas together used at least half the budget.
    assert most_in_window(times, 5.0) >= BUDGET * 5.0 / 2
