"""Schema management (Alembic): create on first use, refuse an old mirror, upgrade on request.

Alembic is imported only when a migration actually runs: every command checks the schema, and
loading Alembic (with Mako and every dialect's DDL module) for a one-row SELECT cost 15 MB of
resident memory per process. :data:`HEAD` names the newest migration; a test keeps it equal to
what Alembic computes from the scripts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text

from worker.errors import NoMirrorError, SchemaOutdatedError, StoreError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
HEAD = "0009"
VERSION_TABLE = "alembic_version"


def _config() -> Config:
    from alembic.config import Config  # noqa: PLC0415 - see the module docstring

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    return HEAD


def scripted_revisions() -> list[str]:
    """Every revision the migration scripts define, newest first (asks Alembic)."""
    from alembic.script import ScriptDirectory  # noqa: PLC0415 - see the module docstring

    return [rev.revision for rev in ScriptDirectory.from_config(_config()).walk_revisions()]


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all()  # noqa: S608
    if len(rows) > 1:
        raise StoreError(
            f"the mirror's {VERSION_TABLE} table holds {len(rows)} revisions (branched history);"
            " restore it from a backup or ask for help"
        )
    return rows[0][0] if rows else None


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the mirror's schema to ``revision`` (the newest by default)."""
    from alembic import command  # noqa: PLC0415 - see the module docstring

    cfg = _config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def ensure_schema(engine: Engine, *, create: bool = True) -> None:
    """Create an empty mirror, accept a current one, refuse anything else with a clear message."""
    current = current_revision(engine)
    if current == HEAD:
        return
    if current is None:
        tables = set(inspect(engine).get_table_names())
        if tables & {"message", "tracked_thread"}:
            raise StoreError(
                "the database holds threadsync-like tables but no schema version; it was not"
                " made by threadsync. Point THREADSYNC_DATABASE_URL at a new database."
            )
        if not create:
            raise NoMirrorError("the mirror database is empty")
        upgrade(engine)
        return
    if current in scripted_revisions():
        raise SchemaOutdatedError(
            f"the mirror's schema is at revision {current} and this threadsync needs {HEAD};"
            " back it up, then run `threadsync db upgrade`"
        )
    raise StoreError(
        f"the mirror's schema revision {current} is unknown to this threadsync (made by a newer"
        " version?); upgrade threadsync"
    )
