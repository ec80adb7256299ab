"""Schema management (Alembic): create on first use, refuse an old mirror, upgrade on request."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from worker.errors import SchemaOutdatedError, StoreError

MIGRATIONS = Path(__file__).with_name("migrations")


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the mirror's schema to ``revision`` (the newest by default)."""
    cfg = _config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def ensure_schema(engine: Engine, *, create: bool = True) -> None:
    """Create an empty mirror, accept a current one, refuse anything else with a clear message."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        tables = set(inspect(engine).get_table_names())
        if tables & {"message", "tracked_thread"}:
            raise StoreError(
                "the database holds threadsync-like tables but no schema version; it was not"
                " made by threadsync. Point THREADSYNC_DATABASE_URL at a new database."
            )
        if not create:
            raise StoreError("the mirror database is empty; run `threadsync sync` to create it")
        upgrade(engine)
        return
    known = {rev.revision for rev in ScriptDirectory.from_config(_config()).walk_revisions()}
    if current in known:
        raise SchemaOutdatedError(
            f"the mirror's schema is at revision {current} and this threadsync needs {head};"
            " back it up, then run `threadsync db upgrade`"
        )
    raise StoreError(
        f"the mirror's schema revision {current} is unknown to this threadsync (made by a newer"
        " version?); upgrade threadsync"
    )
