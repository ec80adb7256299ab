"""Metadata write-back: local edits queued in an outbox, merged three ways, pushed exactly once.

Map: ``merge`` (the pure per-key three-way merge and the wire map), ``limits`` (the service's
metadata limits, applying one edit), ``models`` (the ``metadata_edit`` table), ``queue`` (`metadata
set` / `metadata show` / counts), ``record`` (the push's bookkeeping), ``push`` (the push itself).

Removing a key: the service may merge a modify into the existing map, and then no key can ever be
removed (API.md section 0.4). So an unset key is written as the empty string, on every service:
the key stays, blank, whether the service merges or replaces, and `metadata show` says so. A
blanked key still counts toward the 16-pair limit. Unsetting a key that only a queued edit added
simply drops it from the edit.
"""

from worker.outbox.limits import MetadataLimitError, check_limits
from worker.outbox.merge import Conflict, MergeResult, Policy, merge3, wire_map
from worker.outbox.push import EditOutcome, PushReport, push_pending
from worker.outbox.queue import (
    MetadataView,
    PendingEdit,
    UnknownMessageError,
    edit_counts,
    set_metadata,
    show_metadata,
)

__all__ = [
    "Conflict",
    "EditOutcome",
    "MergeResult",
    "MetadataLimitError",
    "MetadataView",
    "PendingEdit",
    "Policy",
    "PushReport",
    "UnknownMessageError",
    "check_limits",
    "edit_counts",
    "merge3",
    "push_pending",
    "set_metadata",
    "show_metadata",
    "wire_map",
]
