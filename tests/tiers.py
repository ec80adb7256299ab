"""Test tiers: every test is exactly one of ``unit``, ``integration`` or ``process``.

- ``process``: crosses the process boundary: starts a subprocess (the `threadsync` command, the
  daemon, a benchmark), serves the emulator on a loopback socket, or mounts a file system.
- ``integration``: in one process, but with a database (the ``mirror``/``mirror_url``/``pg_url``
  fixtures, a :class:`~worker.store.db.Mirror` or an engine of its own) or the whole CLI through
  Typer's ``CliRunner``.
- ``unit``: everything else (pure code, the client against the in-process emulator, files).

The tier is read from what the test (and its fixtures) refer to, following the helpers of the
suite, of :mod:`worker.testing` and of ``bench``. A module says ``pytestmark = pytest.mark.<tier>``
only where that reading cannot tell; an explicit tier always wins.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

TIERS = ("unit", "integration", "process")

# Names whose use means a process boundary is crossed.
PROCESS_NAMES = frozenset({"subprocess", "Popen", "serve_in_thread"})
# Names whose use means a database (or the whole CLI, which opens one) in this process.
DATABASE_NAMES = frozenset({"Mirror", "create_engine", "sqlite3", "CliRunner", "psycopg"})
DATABASE_FIXTURES = frozenset({"mirror", "mirror_url", "pg_url"})
# Helpers are followed into these modules only (the library itself is not the test's doing).
FOLLOWED = ("tests.", "worker.testing", "bench.")


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _functions(obj: Any) -> Iterator[types.FunctionType]:
    """The plain functions behind ``obj``: itself, or a class's methods."""
    obj = getattr(obj, "__wrapped__", obj)
    if isinstance(obj, types.FunctionType):
        yield obj
    elif isinstance(obj, type):
        for member in vars(obj).values():
            func = member.fget if isinstance(member, property) else member
            func = getattr(func, "__func__", func)  # static and class methods
            if isinstance(func, types.FunctionType):
                yield func


class _Reader:
    """The names reachable from a function through the suite's own helpers, memoised."""

    def __init__(self) -> None:
        self._names: dict[types.CodeType, frozenset[str]] = {}

    def names(self, objs: Iterable[Any]) -> frozenset[str]:
        out: set[str] = set()
        for obj in objs:
            for func in _functions(obj):
                out |= self._reachable(func, set())
        return frozenset(out)

    def _reachable(self, func: types.FunctionType, visiting: set[types.CodeType]) -> frozenset[str]:
        code = func.__code__
        if code in self._names:
            return self._names[code]
        if code in visiting:
            return frozenset()
        visiting.add(code)
        names: set[str] = set()
        for inner in _codes(code):
            names.update(inner.co_names)
        for name in list(names):
            value = func.__globals__.get(name)
            if isinstance(value, types.ModuleType):
                names.add(value.__name__.split(".")[0])
                if value.__name__.startswith(FOLLOWED):  # ``bench_sync.main``: follow the member
                    for member in (getattr(value, n, None) for n in list(names)):
                        for helper in _functions(member):
                            names |= self._reachable(helper, visiting)
            elif str(getattr(value, "__module__", "")).startswith(FOLLOWED):
                for helper in _functions(value):
                    names |= self._reachable(helper, visiting)
        visiting.discard(code)
        self._names[code] = frozenset(names)
        return self._names[code]


def _fixture_functions(item: pytest.Function) -> Iterator[Any]:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return
    for name in item.fixturenames:
        for definition in info.name2fixturedefs.get(name, ()):
            if str(getattr(definition.func, "__module__", "")).startswith(FOLLOWED):
                yield definition.func


def tier_of(item: pytest.Item, reader: _Reader) -> str:
    fixtures = set(getattr(item, "fixturenames", ()))
    if not isinstance(item, pytest.Function):
        return "unit"
    names = reader.names([item.function, *_fixture_functions(item)])
    if names & PROCESS_NAMES:
        return "process"
    if fixtures & DATABASE_FIXTURES or names & DATABASE_NAMES:
        return "integration"
    return "unit"


def assign(items: list[pytest.Item]) -> None:
    """Give every test without an explicit tier the one its code says."""
    reader = _Reader()
    for item in items:
        if any(item.get_closest_marker(t) is not None for t in TIERS):
            continue
        item.add_marker(getattr(pytest.mark, tier_of(item, reader)))
