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
UnknownRoute = Literal["family", "resource", "invalid_url", "bare"]
UnknownVersion = Literal["resource", "unsupported", "bare"]
UnknownThread = Literal["named", "resource", "bare"]
AppendedOrder = Literal["asc", "desc"]
InputAnnotations = Literal["keep", "drop", "reject"]

CURSOR_MISSING_CHOICES: tuple[str, ...] = get_args(CursorMissing)
METADATA_CHOICES: tuple[str, ...] = get_args(MetadataMode)
TIES_CHOICES: tuple[str, ...] = get_args(Ties)
UNKNOWN_ROUTE_CHOICES: tuple[str, ...] = get_args(UnknownRoute)
UNKNOWN_VERSION_CHOICES: tuple[str, ...] = get_args(UnknownVersion)
UNKNOWN_THREAD_CHOICES: tuple[str, ...] = get_args(UnknownThread)
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
    ``unknown_route``: a path nothing lives at (an endpoint with ``/openai`` appended, the OpenAI
    root under the azure profile): ``family`` answers as the family the path starts with does
    (Azure: 404 "Resource not found" with code "404"; otherwise OpenAI's 404 "Invalid URL (GET
    /...)"), or always ``resource``, ``invalid_url``, or ``bare`` (a 404 with no body, as a proxy
    or a host that is not the API gives).
    ``unknown_version``: an api-version the Azure family does not serve: 404 "Resource not found"
    naming ``param`` api-version (``resource``), 400 "UnsupportedApiVersion" naming the version
    (``unsupported``), or 404 "Resource not found" naming nothing (``bare``).
    ``unknown_thread``: a thread id that does not exist: 404 "No thread found with id '...'."
    (``named``), a generic 404 "Resource not found" (``resource``), or a 404 with no body.
    ``appended_order``: the order of the items a conversation append answers (the spec does not
    say): as sent (``asc``) or newest first (``desc``).
    ``input_annotations``: ``output_text`` annotations on input items are kept, silently
    dropped, or refused with a 400 (unverified on the real service).
    """

    cursor_missing: CursorMissing = "404"
    metadata: MetadataMode = "merge"
    ties: Ties = "reverse"
    unknown_route: UnknownRoute = "family"
    unknown_version: UnknownVersion = "resource"
    unknown_thread: UnknownThread = "named"
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
            "unknown_route": UNKNOWN_ROUTE_CHOICES,
            "unknown_version": UNKNOWN_VERSION_CHOICES,
            "unknown_thread": UNKNOWN_THREAD_CHOICES,
            "appended_order": APPENDED_ORDER_CHOICES,
            "input_annotations": INPUT_ANNOTATIONS_CHOICES,
        }
        for name, value in changes.items():
            if name not in allowed:
                raise ValueError(f"unknown behaviour {name!r}")
            if value not in allowed[name]:
                raise ValueError(f"behaviour {name} must be one of {allowed[name]}, not {value!r}")
        return replace(self, **changes)
