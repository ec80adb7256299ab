"""What a long `threadsync sync` is doing, while it does it.

On a terminal: one rich progress line on stderr (threads done of total, messages, requests, rate,
ETA), redrawn in place and cleared at the end. Off a terminal (cron, CI, a container): a
``sync.progress`` log event every ``interval`` seconds with the same figures, so a long run's log
shows it is alive and how far it got. Counting is cheap: a few integer additions per request and
per finished thread; drawing happens on its own schedule, never per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from worker.client.api import ClientEvents
from worker.logs import get_logger
from worker.sync.outcome import ThreadOutcome
from worker.sync.runner import RunReport

log = get_logger()

REDRAW = 0.25  # seconds between redraws of the terminal line


class RunWatch(ClientEvents):
    """Counts a run's progress from the client's responses and each thread's outcome."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.report: RunReport | None = None
        self.threads = 0
        self.done = 0
        self.failed = 0
        self.messages = 0
        self.requests = 0

    def on_response(self, method: str, route: str, status: int | None, seconds: float) -> None:
        self.requests += 1

    def run_started(self, report: RunReport, threads: int) -> None:
        self.report = report
        self.threads = threads
        self.started = self.clock()

    def thread_done(self, outcome: ThreadOutcome) -> None:
        self.done += 1
        self.failed += 0 if outcome.ok else 1
        self.messages += outcome.counts.writes

    def rate(self) -> float:
        """Requests per second since the run began."""
        elapsed = self.clock() - self.started
        return self.requests / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        """Seconds left at the pace of the threads done so far (None before the first)."""
        if not self.done or self.done >= self.threads:
            return None
        elapsed = self.clock() - self.started
        return elapsed / self.done * (self.threads - self.done)


async def show_progress(watch: RunWatch, console: Console, *, interval: float) -> None:
    """Draw (terminal) or log (elsewhere) ``watch`` until cancelled."""
    if console.is_terminal:
        await _draw(watch, console)
    else:
        await _log_every(watch, interval)


async def _draw(watch: RunWatch, console: Console) -> None:
    columns = (
        TextColumn("syncing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "threads · {task.fields[messages]} messages · {task.fields[requests]} requests"
            " · {task.fields[rate]:.1f} req/s · ETA"
        ),
        TimeRemainingColumn(),
    )
    # transient: the line is erased when the run ends, leaving only the summary.
    with Progress(
        *columns, console=console, transient=True, auto_refresh=False, redirect_stderr=True
    ) as bar:
        task = bar.add_task("sync", total=None, messages=0, requests=0, rate=0.0)
        try:
            while True:
                bar.update(
                    task,
                    total=watch.threads or None,
                    completed=watch.done,
                    messages=watch.messages,
                    requests=watch.requests,
                    rate=watch.rate(),
                )
                bar.refresh()
                await anyio.sleep(REDRAW)
        finally:
            bar.stop()


async def _log_every(watch: RunWatch, interval: float) -> None:
    while True:
        await anyio.sleep(interval)
        eta = watch.eta()
        log.info(
            "sync.progress",
            run=watch.report.run_id if watch.report else None,
            threads_done=watch.done,
            threads=watch.threads,
            failed=watch.failed,
            messages=watch.messages,
            requests=watch.requests,
            rate=round(watch.rate(), 1),
            eta_seconds=None if eta is None else round(eta),
        )
