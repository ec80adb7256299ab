"""The one module that imports APScheduler (3.11, the stable line): a handful of schedules.

APScheduler owns *when* the daemon's few jobs run (dispatcher, reconcile, push, backup), never one
job per thread: per-thread due times live in our table (see ``worker.daemon.due``).

Every job is added with the same three settings, chosen on purpose:

- ``max_instances=1``: a run still going when the next falls due is not doubled; the late one is
  skipped. Two dispatcher runs would claim disjoint batches and double the load on the API; two
  reconciles would walk everything twice.
- ``coalesce=True``: after a stall (a long batch, a suspended laptop) the missed runs collapse into
  one; replaying each of them would only run the same job back to back.
- ``misfire_grace_time=None`` (no limit): a run that is late, however late, still runs once.
  APScheduler's default (1 s) discards a run the loop could not start within a second, which is how
  a busy daemon silently stops reconciling.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from worker.errors import ConfigError

# "skipped: maximum number of running instances reached" is max_instances=1 doing its job (a long
# dispatcher batch outlasting the interval); at WARNING it would fire every few seconds.
logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
logging.getLogger("apscheduler.executors").setLevel(logging.ERROR)

JOB_DEFAULTS: dict[str, Any] = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}


@dataclass(frozen=True)
class Every:
    """Run every ``seconds``; ``first_in`` seconds after start (0: at once)."""

    seconds: float
    first_in: float = 0.0


@dataclass(frozen=True)
class Cron:
    """Run on a five-field crontab expression, in UTC."""

    expression: str


@dataclass(frozen=True)
class JobSpec:
    name: str
    run: Callable[[], Awaitable[None]]
    when: Every | Cron


def cron_trigger(expression: str, setting: str = "cron") -> CronTrigger:
    """A crontab trigger, or a :class:`ConfigError` naming the setting."""
    try:
        return CronTrigger.from_crontab(expression, timezone=UTC)
    except ValueError as exc:
        raise ConfigError(
            f"{setting}: {expression!r} is not a crontab expression ({exc}); wanted five fields"
            " like '17 3 * * *'"
        ) from exc


class Schedule:
    """An AsyncIOScheduler on the running event loop, holding our job specs."""

    def __init__(self, jobs: list[JobSpec], *, now: Callable[[], datetime] | None = None) -> None:
        self._now = now or (lambda: datetime.now(UTC))
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        for spec in jobs:
            if isinstance(spec.when, Cron):
                trigger = cron_trigger(spec.when.expression, f"job {spec.name}")
                self._scheduler.add_job(
                    spec.run, trigger, id=spec.name, name=spec.name, **JOB_DEFAULTS
                )
            else:
                # An explicit first run: an interval trigger alone would wait one whole interval.
                first = self._now() + timedelta(seconds=spec.when.first_in)
                trigger = IntervalTrigger(seconds=spec.when.seconds, timezone=UTC)
                self._scheduler.add_job(
                    spec.run,
                    trigger,
                    id=spec.name,
                    name=spec.name,
                    next_run_time=first,
                    **JOB_DEFAULTS,
                )

    def start(self) -> None:
        """Call from inside the running event loop."""
        self._scheduler.start()

    def pause(self) -> None:
        """No new runs; running ones continue (the job runner cancels them its own way)."""
        if self._scheduler.running:
            self._scheduler.pause()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def next_runs(self) -> dict[str, datetime | None]:
        """Each job's next fire time (None while paused)."""
        return {job.id: job.next_run_time for job in self._scheduler.get_jobs()}

    def settings_of(self, name: str) -> dict[str, object]:
        """The scheduling settings a job was added with (for tests and `check --verbose`)."""
        job = self._scheduler.get_job(name)
        if job is None:
            raise KeyError(name)
        return {
            "max_instances": job.max_instances,
            "coalesce": job.coalesce,
            "misfire_grace_time": job.misfire_grace_time,
        }
