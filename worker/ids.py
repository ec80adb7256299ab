"""The services' id syntax, checked once wherever an id comes from the user.

What is certain (API.md, the specs' examples): a thread id is ``thread_`` followed by letters
and digits, a message id ``msg_`` likewise (24 of them in the ids seen from OpenAI and Azure
OpenAI). What is not: whether every id of every service, Foundry classic's included, has exactly
24 characters, or only letters and digits. So the check is the contract's shape, tolerant where the
facts are thin: the prefix exactly, then 1 to 121 characters of ``A-Z a-z 0-9 _ -`` (121 keeps the
whole id within the mirror's 128-character columns). Refused: an empty id, whitespace anywhere,
anything else outside that alphabet (``/``, ``?`` and ``%`` included), a wrong prefix such as
``thred_`` or ``Thread_``, and a leading ``-`` (an option typed where an id belongs; ``-`` alone is
how standard input is named).

:func:`id_problem` answers why an id is refused, in words a user can act on, or None.
"""

from __future__ import annotations

import re
from typing import Final, Literal

from worker.errors import ConfigError

Kind = Literal["thread", "message"]

PREFIX: Final[dict[Kind, str]] = {"thread": "thread_", "message": "msg_"}
MAX_LENGTH: Final = 128  # the mirror's id columns
_BODY = r"[A-Za-z0-9_\-]{1,%d}"
_PATTERN: Final[dict[Kind, re.Pattern[str]]] = {
    kind: re.compile(re.escape(prefix) + _BODY % (MAX_LENGTH - len(prefix)))
    for kind, prefix in PREFIX.items()
}
_EXAMPLE: Final[dict[Kind, str]] = {"thread": "thread_abc123", "message": "msg_abc123"}
_WHITESPACE = re.compile(r"\s")


def is_valid(value: str, kind: Kind = "thread") -> bool:
    """Whether ``value`` has the service's syntax for a ``kind`` id."""
    return _PATTERN[kind].fullmatch(value) is not None


def id_problem(value: str, kind: Kind = "thread") -> str | None:
    """None for a well-formed id; otherwise one sentence saying what is wrong with it."""
    if is_valid(value, kind):
        return None
    prefix, example = PREFIX[kind], _EXAMPLE[kind]
    shown = _shown(value)
    if not value:
        return f"an empty {kind} id; {kind} ids look like {example}"
    if value == "-":
        return (
            "'-' is not a thread id; to read ids from standard input use --from-file -"
            if kind == "thread"
            else f"'-' is not a {kind} id; {kind} ids look like {example}"
        )
    if value.startswith("-"):
        return (
            f"{shown} is not a {kind} id (it looks like an option); {kind} ids look like {example}"
        )
    if _WHITESPACE.search(value):
        return f"{shown} contains whitespace; a {kind} id is one word like {example}"
    other = next((k for k, p in PREFIX.items() if k != kind and value.startswith(p)), None)
    if other is not None:
        return f"{shown} is a {other} id, not a {kind} id; {kind} ids look like {example}"
    if not value.startswith(prefix):
        return f"{shown} does not start with {prefix}; {kind} ids look like {example}"
    if len(value) > MAX_LENGTH:
        return f"{kind} id of {len(value)} characters; ids have at most {MAX_LENGTH}"
    if len(value) == len(prefix):
        return f"{shown} has nothing after {prefix}; {kind} ids look like {example}"
    return f"{shown} has characters no {kind} id has; after {prefix} come letters, digits, _ and -"


def _shown(value: str, limit: int = 60) -> str:
    """The id as quoted in a message: repr (control characters visible), cut when long."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."


def check_id(value: str, kind: Kind = "thread") -> str:
    """``value`` if well formed, else a :class:`ConfigError` naming it and what is wanted."""
    problem = id_problem(value, kind)
    if problem is not None:
        raise ConfigError(problem)
    return value


def check_ids(values: list[str], kind: Kind = "thread") -> list[str]:
    """Every one of ``values`` checked; the error names the first bad one."""
    for value in values:
        check_id(value, kind)
    return values
