"""The bodies of the scheduled jobs, and the runner that starts and cancels them cleanly.

APScheduler only decides *when*; :class:`JobRunner` wraps every job body in an anyio cancel scope
of ours. Shutdown cancels those scopes (never the asyncio task underneath), so the shields around
page transactions hold: an in-flight page commits, then the job unwinds.

In replicas mode each body runs in a schedule slot (``worker/daemon/slots.py``) and fences its side
effects with the slot's lease (:func:`~worker.daemon.slots.current_fence`): the push checks it
before each modify and in each record, the backup before it publishes (under the slot's name) and
before retention, the history pruning in each batch's transaction, the migration in each ledger
change and before each create, append and metadata write, the discovery in its tracking
transaction.

The push and backup bodies import their modules lazily: the daemon starts (and syncs) even where
those features are not installed, and says so once in the log.
"""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any, cast

import anyio

from worker.client import ApiClient
from worker.config import Settings
from worker.daemon.metrics import DaemonMetrics
from worker.daemon.slots import SlotFence, current_fence
from worker.discover import discover
from worker.errors import ThreadsyncError
from worker.logs import get_logger, redact_message
from worker.store.db import Mirror, translate_store_error
from worker.store.models import utcnow
from worker.store.repo import PRUNE_BATCH, prune_runs

log = get_logger()

JobBody = Callable[[], Awaitable[Any]]
BUSY_RETRY = 1.0  # seconds between tries of a backup destination another backup holds


class JobRunner:
    """Runs job bodies under cancel scopes it can cancel all at once, and knows when all ended."""

    def __init__(self, metrics: DaemonMetrics | None = None) -> None:
        self.metrics = metrics
        self.stopping = False
        self._scopes: set[anyio.CancelScope] = set()
        self._idle = anyio.Event()
        self._idle.set()

    @property
    def running(self) -> int:
        return len(self._scopes)

    def wrap(self, name: str, body: JobBody) -> Callable[[], Coroutine[Any, Any, None]]:
        """The coroutine function APScheduler calls: never raises, never starts after stop()."""

        async def job() -> None:
            if self.stopping:
                return
            started = time.monotonic()
            outcome = "ok"
            with anyio.CancelScope() as scope:
                self._scopes.add(scope)
                self._idle = anyio.Event() if self._idle.is_set() else self._idle
                try:
                    await body()
                except Exception as exc:
                    outcome = "error"
                    _log_failure(name, exc)
                finally:
                    self._scopes.discard(scope)
                    if not self._scopes:
                        self._idle.set()
            if scope.cancelled_caught:
                outcome = "cancelled"
            if self.metrics is not None:
                self.metrics.jobs.labels(job=name, outcome=outcome).inc()
            log.debug(
                "daemon.job_done",
                job=name,
                outcome=outcome,
                seconds=round(time.monotonic() - started, 3),
            )

        job.__name__ = f"threadsync_{name}"
        job.__qualname__ = job.__name__
        return job

    def stop(self) -> None:
        """Start no more jobs and cancel the running ones (their shielded commits still finish)."""
        self.stopping = True
        for scope in list(self._scopes):
            scope.cancel()

    async def wait_idle(self, seconds: float) -> bool:
        """True when every running job has ended within ``seconds``."""
        with anyio.move_on_after(seconds):
            await self._idle.wait()
            return True
        return False


def _log_failure(job: str, exc: Exception) -> None:
    """What failed, in words safe for a log: an exception's own text may quote a message's
    JSON (a SQL parameter, a value read from the service), so only the translated sentence or
    a redacted one is logged; the (redacted) traceback only at debug level."""
    known = exc if isinstance(exc, ThreadsyncError) else translate_store_error(exc)
    log.error(
        "daemon.job_failed",
        job=job,
        error=type(exc).__name__,
        message=redact_message(known or exc),
    )
    log.debug("daemon.job_traceback", job=job, exc_info=exc)


async def _settle(result: object) -> None:
    """Await what a feature function returned, if it is awaitable (either kind is accepted)."""
    if inspect.isawaitable(result):
        await result


def _optional(module: str, name: str) -> Callable[..., object] | None:
    """``module.name`` if that feature is installed, else None."""
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    return found if callable(found) else None


class Jobs:
    """Push, backup and run-history job bodies (the dispatcher and the reconcile are on the
    Dispatcher)."""

    def __init__(
        self, client: ApiClient, mirror: Mirror, settings: Settings, *, gate: anyio.Lock
    ) -> None:
        self.client = client
        self.mirror = mirror
        self.settings = settings
        # The dispatcher's gate: a backup syncs first, and must not pass over threads the
        # dispatcher is syncing at the same moment.
        self.gate = gate
        self._said_missing: set[str] = set()
        self.prune_batch = PRUNE_BATCH
        self.sleep: Callable[[float], Awaitable[None]] = anyio.sleep  # tests: a fake
        # The newest thread's creation time the last discovery saw: later ones list newest
        # first and stop there, one request when nothing is new (threads never appear later
        # with an older created_at: the server sets it when it makes them).
        self.discovered_since: int | None = None

    def _missing(self, feature: str, where: str) -> None:
        if feature not in self._said_missing:
            self._said_missing.add(feature)
            log.warning("daemon.feature_unavailable", job=feature, missing=where)

    async def push(self) -> None:
        push_pending = _optional("worker.outbox", "push_pending")
        if push_pending is None:
            self._missing("push", "worker.outbox.push_pending")
            return
        fence = current_fence()
        await _settle(
            push_pending(
                self.client,
                self.mirror,
                policy=self.settings.push.conflict_policy,
                concurrency=self.settings.push.concurrency,
                guard=None if fence is None else fence.guard,
            )
        )

    async def backup(self) -> None:
        run_backup = _optional("worker.backup", "run_backup")
        if run_backup is None:
            self._missing("backup", "worker.backup.run_backup")
            return
        fence = current_fence()
        if fence is not None:
            await self._slot_backup(run_backup, fence)
            return
        async with self.gate:
            await _settle(run_backup(self.settings, self.mirror, self.client))

    async def _slot_backup(self, run_backup: Callable[..., object], fence: SlotFence) -> None:
        """Replicas: no sync first (it would walk threads other replicas hold; their dispatchers
        keep the mirror fresh); one snapshot per slot, published under the lease. A destination
        busy with another backup (a holder paused past its lease still holds the directory's
        lock until it wakes, finds its lease lost and lets go) is waited for: this slot is ours
        now, and the job's lease is renewed meanwhile (lost: the job is cancelled)."""
        busy = _optional("worker.backup", "BackupBusyError")
        while True:
            try:
                await _settle(
                    run_backup(
                        self.settings,
                        self.mirror,
                        None,
                        sync_first=False,
                        slot=fence.slot,
                        before_publish=fence.check,
                    )
                )
            except Exception as exc:
                if busy is None or not isinstance(exc, cast(type, busy)):
                    raise
                log.info("daemon.backup_waits", job=fence.job)
                await self.sleep(BUSY_RETRY)
                continue
            return

    async def discover(self) -> int:
        """Track the threads the Foundry project lists and the mirror does not; how many."""
        fence = current_fence()
        found = await discover(
            self.client,
            self.mirror,
            since=self.discovered_since,
            guard=None if fence is None else fence.guard,
        )
        if found.newest is not None:
            self.discovered_since = max(found.newest, self.discovered_since or found.newest)
        if found.new:
            log.info("daemon.threads_discovered", new=len(found.new), listed=found.found)
        return len(found.new)

    async def migrate(self) -> None:
        """Keep conversations in step with the mirror until cut-over (``daemon.migrate_interval``):
        one ``migrate`` pass; a thread that fails is retried on the next."""
        from worker.migrate.service import run_migration  # noqa: PLC0415 - only when enabled

        fence = current_fence()
        guard = None if fence is None else fence.guard
        report = await run_migration(self.settings, self.mirror, guard=guard)
        totals = report.totals()
        if report.aborted is not None:  # the lease was lost: the slot's new holder goes on
            log.warning("daemon.migrate_aborted", **totals)
        else:
            log.info("daemon.migrated", **totals)
        for outcome in report.failed:
            log.warning("daemon.migrate_failed", thread_id=outcome.thread_id, error=outcome.error)

    async def prune_history(self, now: datetime | None = None) -> int:
        """Delete the sync runs (and their per-thread rows) older than ``run_history_days``.

        The daemon records a run per dispatch with due threads, and a row per thread synced:
        at 1,000 threads every five minutes that is ~290,000 rows a day, kept forever otherwise.
        A batch per transaction, so a long backlog never holds the writer for long.
        """
        days = self.settings.daemon.run_history_days
        before = (now or utcnow()) - timedelta(days=days)
        fence = current_fence()

        def batch() -> int:
            with self.mirror.write() as session:
                if fence is not None:  # replicas: each batch only while the job's lease holds
                    fence.guard(session)
                return prune_runs(session, before, limit=self.prune_batch)

        total = 0
        while True:
            pruned = await self.mirror.run_write(batch)
            total += pruned
            if pruned < self.prune_batch:
                break
        if total:
            log.info("daemon.history_pruned", runs=total, older_than_days=days)
        return total


def edit_counts(mirror: Mirror) -> dict[str, int]:
    """Outbox edits by state, or nothing when the outbox is not installed (blocking)."""
    try:
        counter = importlib.import_module("worker.outbox").edit_counts
    except (ImportError, AttributeError):
        return {}
    with mirror.read() as session:
        counts = counter(session)
    return {str(k): int(v) for k, v in dict(counts).items()}
