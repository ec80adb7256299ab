"""Unknown ``THREADSYNC_*`` environment variables are mistakes, never silently ignored.

A misspelt ``THREADSYNC_DATABSE_URL`` would otherwise leave the default in force and make a new,
empty mirror in the current directory. The valid names are derived, never listed by hand: every
settings key (nested with ``__``), every option's environment twin found by walking the command
tree, and the variables of the test and benchmark harnesses (:data:`HARNESS_PREFIXES`), which
the product itself never reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

from worker.config import COMMAND_VARIABLES, ENV_PREFIX, closest, setting_variables
from worker.errors import ConfigError

# Read by the test suite and the benchmarks only; documented in the README (Configuration).
HARNESS_PREFIXES = ("THREADSYNC_TEST_", "THREADSYNC_BENCH_", "THREADSYNC_CONVERGENCE_")
HARNESS_VARIABLES = frozenset({"THREADSYNC_REQUIRE_POSTGRES", "THREADSYNC_SPECS_DIR"})


def option_variables(command: Any) -> Iterator[str]:
    """The ``envvar`` of every parameter of ``command`` and of all its subcommands.

    Duck-typed: Typer's command classes are click's, or its own copy of them.
    """
    for param in getattr(command, "params", ()):
        names = getattr(param, "envvar", None)
        if isinstance(names, str):
            yield names
        elif names:
            yield from names
    for sub in dict(getattr(command, "commands", None) or {}).values():
        yield from option_variables(sub)


def known_variables(root: Any) -> set[str]:
    """Every ``THREADSYNC_*`` name the program reads, upper case."""
    names = setting_variables() | set(option_variables(root)) | HARNESS_VARIABLES
    return {name.upper() for name in names}


def unknown_variables(root: Any, environ: Mapping[str, str] | None = None) -> list[str]:
    """The ``THREADSYNC_*`` variables set in ``environ`` that nothing reads, sorted."""
    env = os.environ if environ is None else environ
    known = known_variables(root)
    return sorted(
        name
        for name in env
        if name.upper().startswith(ENV_PREFIX)
        and name.upper() not in known
        and not name.upper().startswith(HARNESS_PREFIXES)
    )


def check_variables(root: Any, environ: Mapping[str, str] | None = None) -> None:
    """Refuse the first unknown variable, with the closest valid name; and tell the settings
    which variables are commands' own options (``THREADSYNC_SYNC__FULL``), not settings."""
    settings = setting_variables()
    COMMAND_VARIABLES.update(name for name in option_variables(root) if name not in settings)
    unknown = unknown_variables(root, environ)
    if not unknown:
        return
    name = unknown[0]
    # Compared without the prefix every name shares, or anything would look close.
    stems = {known.removeprefix(ENV_PREFIX): known for known in known_variables(root)}
    guess = closest(name.upper().removeprefix(ENV_PREFIX), set(stems))
    hint = (
        f"did you mean {stems[guess]}?"
        if guess
        else "unset it; `threadsync --help` and each command's --help list the variables"
    )
    more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
    raise ConfigError(f"unknown variable {name}{more}; {hint}")
