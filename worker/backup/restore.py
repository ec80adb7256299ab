"""Restoring a snapshot into a mirror (SQLite or PostgreSQL), all or nothing.

The snapshot is verified first (a damaged backup is refused, naming what is wrong). The target is
created if empty; a target holding data is refused unless ``force``, which replaces its contents.
Rows are copied in one transaction on the target, so a failed restore leaves it as it was.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine

from worker.backup.manifest import DATABASE
from worker.backup.tables import clear_tables, copy_tables, reflect, row_counts
from worker.backup.verify import verify
from worker.errors import ConfigError, StoreError
from worker.logs import get_logger
from worker.store.db import Mirror
from worker.store.schema import current_revision, head_revision, scripted_revisions, upgrade

log = get_logger()


@dataclass(frozen=True)
class RestoreResult:
    target: str
    rows: dict[str, int]
    replaced: bool
    deleted: int = 0  # of the message rows, those the server no longer lists (tombstones)

    @property
    def messages(self) -> int:
        """Message rows restored, tombstones included (``live`` leaves them out)."""
        return self.rows.get("message", 0)

    @property
    def live(self) -> int:
        return self.messages - self.deleted


def restore(path: Path, database_url: str, force: bool = False) -> RestoreResult:
    """Copy the snapshot at ``path`` into the mirror at ``database_url``."""
    report = verify(Path(path))
    if not report.ok:
        raise StoreError(f"refusing to restore {path}: {report.problem}")
    with tempfile.TemporaryDirectory(prefix="threadsync-restore-") as scratch:
        result = _restore(Path(path) / DATABASE, database_url, force, Path(scratch))
    restored = dataclasses.replace(result, deleted=report.deleted)
    log.info(
        "backup.restored",
        target=restored.target,
        messages=restored.live,
        deleted=restored.deleted,
    )
    return restored


def _restore(database: Path, database_url: str, force: bool, scratch: Path) -> RestoreResult:
    snapshot = create_engine(f"sqlite:///file:{database}?mode=ro&immutable=1&uri=true")
    target = Mirror(database_url)
    try:
        revision = current_revision(snapshot)
        if revision != head_revision():
            if revision not in scripted_revisions():
                raise StoreError(
                    f"the snapshot's schema revision is {revision}, unknown to this threadsync"
                    f" (at {head_revision()}); restore it with the threadsync that made it"
                )
            # Made by an earlier threadsync: a private copy is brought up to date and restored
            # from; the backup itself is never changed.
            snapshot.dispose()
            snapshot = _upgraded_copy(database, scratch, revision)
        with (
            snapshot.connect() as src,
            target.engine.execution_options(threadsync_write=True).connect() as dst,
            dst.begin(),
        ):
            present = {name: n for name, n in row_counts(dst, reflect(dst)).items() if n}
            if present and not force:
                held = ", ".join(f"{n} {name} rows" for name, n in sorted(present.items()))
                raise ConfigError(
                    f"the mirror at {target.safe_url} is not empty ({held}); restore into an"
                    " empty database, or pass --force to replace its contents"
                )
            if present:
                clear_tables(dst)
            rows = copy_tables(src, dst)
        return RestoreResult(target.safe_url, rows, replaced=bool(present))
    finally:
        target.dispose()
        snapshot.dispose()


def _upgraded_copy(database: Path, scratch: Path, revision: str | None) -> Engine:
    copy = scratch / DATABASE
    shutil.copyfile(database, copy)
    copy.chmod(0o600)  # it holds the conversations too
    engine = create_engine(f"sqlite:///{copy}")
    upgrade(engine)
    log.info("backup.snapshot_upgraded", from_revision=revision, to_revision=head_revision())
    return engine
