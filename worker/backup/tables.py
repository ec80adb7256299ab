"""Copying threadsync's tables between two databases of the same schema, in batches.

Used both ways: PostgreSQL mirror -> snapshot SQLite file (backup), snapshot -> any mirror
(restore). Tables are found in the live database rather than from a fixed list, so tables added by
later migrations (the metadata outbox, ...) are copied too. Rows stream in batches; memory stays
flat whatever the mirror's size.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, MetaData, Table, func, select, text

from worker.errors import StoreError

VERSION_TABLE = "alembic_version"
BATCH = 5000


def reflect(conn: Connection) -> MetaData:
    meta = MetaData()
    meta.reflect(bind=conn)
    return meta


def data_tables(meta: MetaData) -> list[Table]:
    """Every table but Alembic's version table, parents before children (foreign keys)."""
    return [t for t in meta.sorted_tables if t.name != VERSION_TABLE]


def row_counts(conn: Connection, meta: MetaData) -> dict[str, int]:
    return {
        t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
        for t in data_tables(meta)
    }


def copy_tables(source: Connection, target: Connection) -> dict[str, int]:
    """Copy every data table's rows from ``source`` into the (empty) same tables in ``target``.

    Returns rows copied per table. Both connections must be inside their transactions; the caller
    decides isolation (repeatable read on the source) and commits the target.
    """
    src_meta, dst_meta = reflect(source), reflect(target)
    copied: dict[str, int] = {}
    for table in data_tables(src_meta):
        if table.name not in dst_meta.tables:
            raise StoreError(
                f"table {table.name} exists in the source but not in the target; are both at the"
                " same schema revision?"
            )
        dst = dst_meta.tables[table.name]
        # Generated columns (message.metadata) are the target database's to compute.
        columns = [
            c.name
            for c in table.columns
            if c.name in dst.columns and dst.c[c.name].computed is None
        ]
        result = source.execute(
            select(*(table.c[c] for c in columns)), execution_options={"yield_per": BATCH}
        )
        fix = _timestamp_fix(target.dialect.name)
        n = 0
        for batch in result.partitions(BATCH):
            target.execute(
                dst.insert(), [dict(zip(columns, map(fix, row), strict=True)) for row in batch]
            )
            n += len(batch)
        copied[str(table.name)] = n
    if target.dialect.name == "postgresql":
        _advance_sequences(target, dst_meta)
    return copied


def _timestamp_fix(target_dialect: str) -> Callable[[Any], Any]:
    """Timestamps are UTC in threadsync. SQLite stores them without an offset, so aware values
    going into SQLite are converted to UTC first, and naive values read from SQLite are UTC."""

    def to_sqlite(value: Any) -> Any:
        if isinstance(value, datetime) and value.tzinfo is not None:
            return value.astimezone(UTC)
        return value

    def from_sqlite(value: Any) -> Any:
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    return to_sqlite if target_dialect == "sqlite" else from_sqlite


def _advance_sequences(conn: Connection, meta: MetaData) -> None:
    """Explicit ids were inserted into serial columns: move their sequences past them."""
    for table in data_tables(meta):
        for column in table.primary_key.columns:
            seq = conn.execute(
                text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table.name, "c": column.name}
            ).scalar_one()
            if seq is None:
                continue
            conn.execute(
                text(
                    f'SELECT setval(:s, COALESCE((SELECT MAX("{column.name}") FROM'  # noqa: S608 - names come from reflection, not input
                    f' "{table.name}"), 0) + 1, false)'
                ),
                {"s": seq},
            )


def clear_tables(conn: Connection) -> None:
    """Delete every data row, children first (used by ``restore --force``)."""
    for table in reversed(data_tables(reflect(conn))):
        conn.execute(table.delete())
