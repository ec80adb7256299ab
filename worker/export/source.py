"""Streaming the mirror in export order: threads in turn, each in server order (oldest first).

The statements are ``worker/store/messages.py``'s; this module chooses the path per backend.
"""

from __future__ import annotations

from collections.abc import Iterator

from worker.store import messages
from worker.store.db import Mirror
from worker.store.messages import RawBatch, Row, Selection, sqlite_raw_batches, sqlite_rows
from worker.store.repo import tracked_in_order

__all__ = [
    "RawBatch",
    "Row",
    "Selection",
    "count_rows",
    "iter_rows",
    "sqlite_raw_batches",
    "sqlite_rows",
    "thread_order",
]


def thread_order(mirror: Mirror, selection: Selection) -> list[str]:
    """Tracked threads in the order they were added, then any other thread that has messages."""
    if selection.thread_ids is not None:
        return list(dict.fromkeys(selection.thread_ids))
    with mirror.read() as session:
        tracked = tracked_in_order(session)
        others = messages.thread_ids_with_messages(session)
    known = set(tracked)
    return tracked + [t for t in others if t not in known]


def count_rows(mirror: Mirror, selection: Selection) -> int:
    """How many rows :func:`iter_rows` will yield (for a progress bar's total)."""
    with mirror.read() as session:
        return messages.count_selected(session, selection)


def iter_rows(mirror: Mirror, selection: Selection, *, batch: int = 2000) -> Iterator[Row]:
    """Yield rows thread by thread; memory stays flat (the database cursor streams)."""
    if mirror.is_sqlite:
        with mirror.read() as session:
            yield from messages.selected_rows(session, selection)
        return
    for thread_id in thread_order(mirror, selection):
        with mirror.read() as session:
            yield from messages.selected_of_thread(session, thread_id, selection, batch=batch)
