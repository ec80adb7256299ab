"""The behaviour switches: how the emulator answers where the real service's behaviour is unknown.

API.md section 11 lists the unknowns; each one is a switch here so that the worker can be proven
correct under every plausible answer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, get_args

CursorMissing = Literal["404", "400", "empty", "ignore", "keep_place"]
MetadataMode = Literal["merge", "replace"]
Ties = Literal["reverse", "stable"]
AppendedOrder = Literal["asc", "desc"]
InputAnnotations = Literal["keep", "drop", "reject"]

CURSOR_MISSING_CHOICES: tuple[str, ...] = get_args(CursorMissing)
METADATA_CHOICES: tuple[str, ...] = get_args(MetadataMode)
TIES_CHOICES: tuple[str, ...] = get_args(Ties)
APPENDED_ORDER_CHOICES: tuple[str, ...] = get_args(AppendedOrder)
INPUT_ANNOTATIONS_CHOICES: tuple[str, ...] = get_args(InputAnnotations)


@dataclass(frozen=True, slots=True)
class Behaviour:
    """One choice for each unknown of the wire contract.

    ``cursor_missing``: what an ``after``/``before`` naming a deleted or never-existing message
    does: 404, 400, an empty page with ``has_more=false``, listing as if no cursor was sent, or
    (``keep_place``) deleted messages keep their place for cursor purposes while an id that never
    existed answers 404.
    ``metadata``: modify merges the sent keys into the existing map, or replaces the map.
    ``ties``: within one ``created_at`` second, ``reverse`` makes a desc listing the exact reverse
    of the asc one; ``stable`` keeps the creation sequence in both orders.
    ``appended_order``: the order of the items a conversation append answers (the spec does not
    say): as sent (``asc``) or newest first (``desc``).
    ``input_annotations``: ``output_text`` annotations on input items are kept, silently
    dropped, or refused with a 400 (unverified on the real service).
    """

    cursor_missing: CursorMissing = "404"
    metadata: MetadataMode = "merge"
    ties: Ties = "reverse"
    appended_order: AppendedOrder = "asc"
    input_annotations: InputAnnotations = "keep"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def updated(self, changes: dict[str, Any]) -> Behaviour:
        """A copy with ``changes`` applied; unknown names or values raise ValueError."""
        allowed = {
            "cursor_missing": CURSOR_MISSING_CHOICES,
            "metadata": METADATA_CHOICES,
            "ties": TIES_CHOICES,
            "appended_order": APPENDED_ORDER_CHOICES,
            "input_annotations": INPUT_ANNOTATIONS_CHOICES,
        }
        for name, value in changes.items():
            if name not in allowed:
                raise ValueError(f"unknown behaviour {name!r}")
            if value not in allowed[name]:
                raise ValueError(f"behaviour {name} must be one of {allowed[name]}, not {value!r}")
        return replace(self, **changes)
