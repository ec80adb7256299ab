"""The service's metadata limits and applying one local edit to a map, checked before queueing.

Limits (API.md section 2.4): at most 16 pairs, keys at most 64 characters, values at most 512,
string values only. They are checked on the map as it will be after the edit, blanked keys
included: a blanked key still occupies a pair on the server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from worker.errors import ConfigError
from worker.outbox.merge import BLANK

MAX_PAIRS = 16
MAX_KEY = 64
MAX_VALUE = 512


class MetadataLimitError(ConfigError):
    """An edit would break one of the service's metadata limits; nothing was queued."""

    def __init__(self, message: str, *, key: str | None, limit: str) -> None:
        super().__init__(message)
        self.key = key
        self.limit = limit


def check_limits(metadata: Mapping[Any, Any]) -> None:
    """Raise :class:`MetadataLimitError` naming the first key (and limit) the map breaks."""
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise MetadataLimitError(
                f"metadata key {key!r} is a {type(key).__name__}; keys must be strings",
                key=str(key),
                limit="string keys",
            )
        if not isinstance(value, str):
            raise MetadataLimitError(
                f"metadata key {key!r}: the value is a {type(value).__name__}; values must be"
                " strings",
                key=key,
                limit="string values",
            )
        if len(key) > MAX_KEY:
            raise MetadataLimitError(
                f"metadata key {key[:20]!r}...: {len(key)} characters; keys may have at most"
                f" {MAX_KEY}",
                key=key,
                limit=f"key <= {MAX_KEY} characters",
            )
        if len(value) > MAX_VALUE:
            raise MetadataLimitError(
                f"metadata key {key!r}: the value has {len(value)} characters; values may have"
                f" at most {MAX_VALUE}",
                key=key,
                limit=f"value <= {MAX_VALUE} characters",
            )
    if len(metadata) > MAX_PAIRS:
        raise MetadataLimitError(
            f"metadata would hold {len(metadata)} pairs; at most {MAX_PAIRS} are allowed (an"
            " unset key stays on the server as a blank value and still counts)",
            key=None,
            limit=f"<= {MAX_PAIRS} pairs",
        )


def apply_edit(
    desired: Mapping[str, str],
    base: Mapping[str, str],
    *,
    set: Mapping[str, str] | None = None,
    unset: Sequence[str] | None = None,
) -> dict[str, str]:
    """``desired`` with ``set`` written and ``unset`` removed, checked against the limits.

    Unsetting a key the server holds (it is in ``base``) blanks it; unsetting a key only this
    pending edit added simply drops it, so nothing is ever sent for it.
    """
    to_set = dict(set or {})
    to_unset = list(unset or [])
    both = sorted(k for k in to_unset if k in to_set)
    if both:
        raise ConfigError(f"metadata key {both[0]!r} is both set and unset in one edit")
    check_limits(to_set)  # types and sizes of what the user typed, before merging
    out = dict(desired)
    out.update(to_set)
    for key in to_unset:
        if key in base:
            out[key] = BLANK
        else:
            out.pop(key, None)
    check_limits(out)
    return out
