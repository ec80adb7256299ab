"""Backups of the mirror: snapshots, verification, retention, restore.

:func:`run_backup` is the one code path for ``threadsync backup`` and the daemon's backup schedule:
take the destination's lock, sync (unless told not to), write a snapshot, and only then apply
retention, so a failed run never deletes an older good backup.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import anyio
import anyio.to_thread

from worker.backup.lock import BackupBusyError, backup_lock
from worker.backup.manifest import MANIFEST
from worker.backup.restore import RestoreResult, restore
from worker.backup.retention import plan_retention
from worker.backup.snapshot import (
    PARTIAL_SUFFIX,
    PREFIX,
    Snapshot,
    backup_failure,
    take_snapshot,
    taken_at_of,
)
from worker.backup.verify import VerifyReport, verify
from worker.client import ApiClient
from worker.config import BackupSettings, Settings
from worker.errors import ConfigError, MisconfiguredError
from worker.logs import get_logger
from worker.store.db import Mirror
from worker.store.models import utcnow
from worker.sync.runner import RunReport, sync_threads

__all__ = [
    "BackupBusyError",
    "BackupInfo",
    "BackupResult",
    "RestoreResult",
    "VerifyReport",
    "apply_retention",
    "list_backups",
    "plan_retention",
    "restore",
    "run_backup",
    "verify",
]

log = get_logger()


@dataclass(frozen=True)
class BackupInfo:
    """A snapshot directory found in a destination."""

    path: Path
    taken_at: datetime
    complete: bool  # has a manifest (verify says whether it is sound)


@dataclass
class BackupResult:
    snapshot: Snapshot
    sync: RunReport | None = None
    removed: list[Path] = field(default_factory=list)
    sync_error: str | None = None  # why the sync before it stopped (a configuration error)

    @property
    def sync_ok(self) -> bool:
        return self.sync_error is None and (self.sync is None or self.sync.ok)


def list_backups(dest: Path) -> list[BackupInfo]:
    """Snapshots in ``dest``, oldest first (hidden partial directories are not listed)."""
    found: list[BackupInfo] = []
    if not Path(dest).is_dir():
        raise ConfigError(f"{dest} is not a directory")
    for entry in Path(dest).iterdir():
        taken = taken_at_of(entry.name)
        if taken is not None and entry.is_dir():
            found.append(BackupInfo(entry, taken, (entry / MANIFEST).is_file()))
    return sorted(found, key=lambda b: b.taken_at)


def apply_retention(dest: Path, policy: BackupSettings) -> list[Path]:
    """Delete complete snapshots the policy does not keep, and partial leftovers of crashed runs.

    Call only while holding the destination's lock, after a successful snapshot.
    """
    complete = [b for b in list_backups(dest) if b.complete]
    keep = plan_retention(
        [b.taken_at for b in complete],
        keep_last=policy.keep_last,
        keep_daily=policy.keep_daily,
        keep_weekly=policy.keep_weekly,
        keep_monthly=policy.keep_monthly,
    )
    doomed = [b.path for b in complete if b.taken_at not in keep]
    doomed += [p for p in Path(dest).glob(f".{PREFIX}*{PARTIAL_SUFFIX}") if p.is_dir()]
    for path in doomed:
        # Rename first: a half-deleted snapshot must never look like a snapshot.
        trash = path.with_name(f".{path.name.lstrip('.')}.deleting")
        path.rename(trash)
        shutil.rmtree(trash)
        log.info("backup.removed", path=str(path))
    return doomed


def _destination(settings: Settings, dest: Path | None) -> Path:
    target = dest or settings.backup.dest
    if target is None:
        raise ConfigError(
            "no backup destination: pass --dest DIR or set backup.dest (THREADSYNC_BACKUP__DEST)"
        )
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"backup destination {target} is not a directory")
    try:
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise backup_failure(target, exc) from None
    return target


async def run_backup(
    settings: Settings,
    mirror: Mirror,
    client: ApiClient | None,
    *,
    dest: Path | None = None,
    sync_first: bool = True,
    now: Callable[[], datetime] = utcnow,
    slot: datetime | None = None,
    before_publish: Callable[[], None] | None = None,
) -> BackupResult:
    """Lock, sync (when ``sync_first`` and a client is given), snapshot, then apply retention.

    ``slot`` and ``before_publish`` (the daemon in replicas mode): the snapshot is named by the
    schedule slot and published at most once under that name; ``before_publish`` (the job's
    lease check, blocking) runs right before the publish and again before retention, and
    refuses either by raising (see :func:`worker.backup.snapshot.take_snapshot`).

    A sync that fails for some threads does not stop the backup (the mirror is still worth
    keeping; the API may be gone for good): the result's ``sync_ok`` says so and the CLI exits 1.
    Raises :class:`BackupBusyError` when another backup holds the destination.
    """
    target = _destination(settings, dest)
    with backup_lock(target):
        report: RunReport | None = None
        sync_error: str | None = None
        if sync_first and client is not None:
            try:
                report = await sync_threads(
                    client,
                    mirror,
                    concurrency=settings.sync.concurrency,
                    gone_recheck=settings.sync.gone_recheck_interval,
                )
            except MisconfiguredError as exc:
                # The mirror is unchanged and still worth a snapshot (the API may be gone for
                # good, answering 404 everywhere): back it up, and say why it was not synced.
                sync_error = str(exc)
                log.warning("backup.sync_stopped", error=sync_error)
        elif sync_first:
            log.warning("backup.sync_skipped", reason="no API client")
        log.info("backup.started", dest=str(target))
        with anyio.CancelScope(shield=True):
            # Shielded: a cancelled caller still waits for the snapshot to finish or clean up, so
            # the lock is never released while a worker thread is still writing.
            snapshot = await anyio.to_thread.run_sync(
                lambda: take_snapshot(
                    mirror, target, now=now(), slot=slot, before_publish=before_publish
                )
            )
            if before_publish is not None:
                await anyio.to_thread.run_sync(before_publish)
            removed = await anyio.to_thread.run_sync(apply_retention, target, settings.backup)
    log.info(
        "backup.finished",
        path=str(snapshot.path),
        threads=snapshot.threads,
        messages=snapshot.messages,
        deleted=snapshot.deleted,
        bytes=snapshot.bytes,
        removed=len(removed),
    )
    return BackupResult(snapshot, report, removed, sync_error)
