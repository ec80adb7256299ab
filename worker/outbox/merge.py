"""The three-way merge of metadata maps, per key, as plain functions over plain values.

``base`` is the remote map the local edit started from, ``local`` the map the user wants, ``remote``
the map the server holds now. Per key (a missing key is ``None``):

- both sides agree (``local == remote``): that value, whoever changed it;
- only the server changed it (``local == base``): the server's value is kept;
- only the user changed it (``remote == base``): the user's value is sent;
- both changed it, to different values: a :class:`Conflict`, resolved by the push policy
  (``local`` or ``remote``) or held (``fail``).

Keys cannot be removed when the service merges (API.md section 0.4), so :func:`wire_map` turns
"absent from the result but present remotely" into the empty string: the key is blanked, which
gives the same map on a merging and on a replacing service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Policy = Literal["fail", "local", "remote"]
POLICIES: tuple[Policy, ...] = ("fail", "local", "remote")
BLANK = ""
"""What an unset key is sent as: the only value a merging service lets us write over a key."""


@dataclass(frozen=True, slots=True)
class Conflict:
    """One key changed on both sides to different values (``None``: the key is absent)."""

    key: str
    base: str | None
    local: str | None
    remote: str | None


@dataclass(frozen=True, slots=True)
class MergeResult:
    """The per-key merge. ``merged`` holds every non-conflicting key's outcome; a conflicting key
    keeps its remote value there until :meth:`resolved` picks a side."""

    merged: dict[str, str]
    conflicts: tuple[Conflict, ...] = field(default=())

    @property
    def clean(self) -> bool:
        return not self.conflicts

    def resolved(self, policy: Policy) -> dict[str, str]:
        """The merged map with conflicts settled by ``policy`` (``fail`` keeps the remote side,
        which is only meaningful when :attr:`clean`)."""
        out = dict(self.merged)
        if policy != "local":
            return out
        for c in self.conflicts:
            if c.local is None:
                out.pop(c.key, None)
            else:
                out[c.key] = c.local
        return out


def merge3(
    base: Mapping[str, str], local: Mapping[str, str], remote: Mapping[str, str]
) -> MergeResult:
    """Merge ``local`` and ``remote`` changes against their common ``base``, key by key."""
    merged: dict[str, str] = {}
    conflicts: list[Conflict] = []
    for key in sorted({*base, *local, *remote}):
        b, lo, r = base.get(key), local.get(key), remote.get(key)
        if lo in (r, b):
            value = r
        elif r == b:
            value = lo
        else:
            conflicts.append(Conflict(key, b, lo, r))
            value = r
        if value is not None:
            merged[key] = value
    return MergeResult(merged, tuple(conflicts))


def wire_map(result: Mapping[str, str], remote: Mapping[str, str]) -> dict[str, str]:
    """The complete map to send so the server ends at ``result`` whether it merges or replaces.

    A key the server holds that ``result`` lacks is sent blank (a merging service would keep it
    otherwise, and a replacing one then agrees).
    """
    out = dict(result)
    for key in remote:
        out.setdefault(key, BLANK)
    return out


def changed_keys(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """Keys whose value differs (or that appear or disappear), sorted: what a log line names."""
    return sorted(k for k in {*before, *after} if before.get(k) != after.get(k))


def as_metadata(value: Any) -> dict[str, str]:
    """A metadata map as stored or received (null, or defensively odd values, become absent)."""
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, str)}
