"""`threadsync db upgrade|current`: the mirror's schema."""

from __future__ import annotations

import typer

from worker.cli.common import command, globals_of, out_console
from worker.store import schema
from worker.store.db import Mirror

db_app = typer.Typer(rich_markup_mode=None, help="The mirror database's schema.")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")


@db_app.command("upgrade")
@command
def upgrade(ctx: typer.Context) -> None:
    """Bring the mirror's schema to this version of threadsync (back it up first)."""
    mirror = Mirror(globals_of(ctx).settings().database_url, check=False)
    before = schema.current_revision(mirror.engine)
    schema.upgrade(mirror.engine)
    after = schema.current_revision(mirror.engine)
    out_console.print(f"schema: {before or 'empty'} -> {after}")


@db_app.command("current")
@command
def current(ctx: typer.Context) -> None:
    """Print the mirror's schema revision and the one this threadsync needs."""
    # A question about the mirror never makes one.
    mirror = Mirror(globals_of(ctx).settings().database_url, create=False, check=False)
    current_rev = schema.current_revision(mirror.engine) or "empty"
    out_console.print(f"mirror: {current_rev}; needed: {schema.head_revision()}")
