"""Reading thread ids from a file or standard input, for `threads add|remove --from-file`.

Two layouts, told apart by the first line that is neither blank nor a ``#`` comment:

- one id per line;
- CSV with a header naming the column that holds the ids (``thread_id`` unless ``--column``): the
  first line is a header when it contains a comma, when it is exactly the column's name, or when
  ``--column`` was given.

Blank lines and ``#`` comment lines are skipped in both; spaces around a line or a CSV field are
dropped (CRLF files, ``a, b`` CSV), spaces inside an id are not. Every id is checked against the
service's syntax (:mod:`worker.ids`); a bad one is recorded with its line number, never dropped
silently. Duplicates are counted, and only the first is kept.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from worker.errors import ConfigError
from worker.ids import id_problem

DEFAULT_COLUMN = "thread_id"
STDIN = "-"


@dataclass(frozen=True)
class BadLine:
    """A line whose id is not well formed, and why."""

    line: int
    problem: str


@dataclass
class IdList:
    """What a file held: the distinct good ids in file order, duplicates, bad lines."""

    source: str
    ids: list[str] = field(default_factory=list)
    duplicates: int = 0
    bad: list[BadLine] = field(default_factory=list)

    @property
    def lines_with_ids(self) -> int:
        return len(self.ids) + self.duplicates + len(self.bad)


def read_ids(path: str, *, column: str | None = None) -> IdList:
    """Read ``path`` (``-``: standard input) and parse it with :func:`parse_ids`."""
    source = "standard input" if path == STDIN else path
    return parse_ids(_decode(_read_bytes(path), source), source=source, column=column)


def _read_bytes(path: str) -> bytes:
    if path == STDIN:
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"--from-file {path}: no such file; name a file of thread ids") from None
    except IsADirectoryError:
        raise ConfigError(f"--from-file {path}: is a directory; name a file of ids") from None
    except OSError as exc:
        raise ConfigError(f"--from-file {path}: cannot read it: {exc.strerror}") from None


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")  # a spreadsheet's CSV often starts with a BOM
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{source}:{line}: not UTF-8 text (byte {exc.start}); save the file as UTF-8"
        ) from None


def _content_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, stripped line)`` for every line that is not blank or a comment."""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


def parse_ids(text: str, *, source: str, column: str | None = None) -> IdList:
    """The ids in ``text`` (see the module docstring for the layouts)."""
    out = IdList(source=source)
    lines = _content_lines(text)
    first = next(lines, None)
    if first is None:
        return out
    index = _header_index(first, column, source)
    seen: set[str] = set()
    if index is None:
        _take(out, seen, *first)
    for number, line in lines:
        if index is None:
            _take(out, seen, number, line)
            continue
        fields = _fields(line)
        if index >= len(fields):
            wanted = column or DEFAULT_COLUMN
            problem = f"no {wanted} field (the row has {len(fields)} of the header's columns)"
            out.bad.append(BadLine(number, problem))
        else:
            _take(out, seen, number, fields[index].strip())
    return out


def _fields(line: str) -> list[str]:
    return next(csv.reader([line]), [])


def _header_index(first: tuple[int, str], column: str | None, source: str) -> int | None:
    """The id column's position when the first line is a CSV header; None for a plain list."""
    number, line = first
    wanted = column or DEFAULT_COLUMN
    if column is None and "," not in line and line != DEFAULT_COLUMN:
        return None
    names = [name.strip() for name in _fields(line)]
    if wanted in names:
        return names.index(wanted)
    raise ConfigError(
        f"{source}:{number}: the header ({', '.join(names)}) has no column {wanted!r};"
        " name the column holding the ids with --column"
    )


def _take(out: IdList, seen: set[str], number: int, value: str) -> None:
    if value in seen:
        out.duplicates += 1
        return
    problem = id_problem(value)
    if problem is not None:
        out.bad.append(BadLine(number, problem))
        return
    seen.add(value)
    out.ids.append(value)
