"""What ``worker/store/sync_state.py`` assumes of SQLAlchemy's internals, named by test.

``_state_defaults`` renders ``sync_state``'s model defaults as SQL literals by picking the columns
whose default is a ``sqlalchemy.sql.schema.ScalarElementColumnDefault`` (a class SQLAlchemy does
not export from ``sqlalchemy`` or ``sqlalchemy.schema``) and reading its ``arg``. A scalar default
of another class would be skipped without an error, and the bulk insert would leave that column
to the database; so the assumption is asserted here."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Integer, MetaData, Table
from sqlalchemy.sql.schema import ScalarElementColumnDefault

from worker.store.models import SyncState


def test_sqlalchemy_scalar_default_is_scalarelementcolumndefault_with_arg() -> None:
    table = Table(
        "t",
        MetaData(),
        Column("n", Integer, default=3),
        Column("b", Boolean, default=False),
        Column("f", Integer, default=lambda: 1),
        Column("s", Integer, server_default="0"),
    )
    assert isinstance(table.c.n.default, ScalarElementColumnDefault)
    assert table.c.n.default.arg == 3
    assert isinstance(table.c.b.default, ScalarElementColumnDefault)
    assert table.c.b.default.arg is False
    assert not isinstance(table.c.f.default, ScalarElementColumnDefault)
    assert table.c.s.default is None


def test_sqlmodel_field_defaults_are_scalarelementcolumndefault() -> None:
    """Every scalar default of ``sync_state`` (SQLModel ``Field(default=...)``) is of the class
    ``_state_defaults`` picks, so none is skipped."""
    table: Table = SyncState.__table__  # type: ignore[attr-defined]
    scalar = [c for c in table.columns if c.default is not None and c.default.is_scalar]
    assert scalar  # the model has some, or this test asserts nothing
    assert all(isinstance(c.default, ScalarElementColumnDefault) for c in scalar)
