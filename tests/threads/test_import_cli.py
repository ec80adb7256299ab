"""`threads add|remove` from a file or standard input, and ids checked wherever a user gives one.

Every test that touches the mirror runs on SQLite and PostgreSQL (``mirror_url``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner, Result

from worker.cli.app import app
from worker.store.db import Mirror
from worker.store.repo import thread_statuses


def cli(mirror_url: str, *args: str, stdin: str | None = None) -> Result:
    try:
        return CliRunner().invoke(app, ["--database-url", mirror_url, *args], input=stdin)
    finally:
        structlog.reset_defaults()  # the app logged to the runner's stderr, closed now


def states(mirror_url: str) -> list[tuple[str, str]]:
    """``(thread_id, state)`` in the order the threads were added."""
    mirror = Mirror(mirror_url)
    try:
        with mirror.read() as session:
            return [(s.thread_id, s.state) for s in thread_statuses(session)]
    finally:
        mirror.dispose()


def write(tmp_path: Path, text: str, name: str = "ids.txt") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_an_ids_file_tracks_every_id_in_file_order(mirror_url: str, tmp_path: Path) -> None:
    ids = [f"thread_{n:04d}zz" for n in range(300)][::-1]  # not sorted: order must come from file
    path = write(tmp_path, "\n".join(ids) + "\n")
    result = cli(mirror_url, "threads", "add", "--from-file", path)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{path}: 300 ids: 300 added"
    assert states(mirror_url) == [(t, "active") for t in ids]


def test_comments_blank_lines_and_duplicates_are_counted_not_errors(
    mirror_url: str, tmp_path: Path
) -> None:
    path = write(tmp_path, "# from the app db\n\nthread_a\n  \nthread_b\n# thread_x\nthread_a\n")
    result = cli(mirror_url, "threads", "add", "-f", path)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{path}: 2 ids: 2 added (1 duplicate)"
    assert states(mirror_url) == [("thread_a", "active"), ("thread_b", "active")]


def test_already_tracked_ids_are_counted_and_paused_ones_reactivated(
    mirror_url: str, tmp_path: Path
) -> None:
    assert cli(mirror_url, "threads", "add", "thread_a", "thread_b").exit_code == 0
    assert cli(mirror_url, "threads", "remove", "thread_b").exit_code == 0
    path = write(tmp_path, "thread_a\nthread_b\nthread_c\n")
    result = cli(mirror_url, "threads", "add", "-f", path, "--verbose")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "thread_a: already tracked",
        "thread_b: reactivated (was paused)",
        "thread_c: added",
        f"{path}: 3 ids: 1 added, 1 re-activated, 1 already tracked",
    ]
    assert {s for _, s in states(mirror_url)} == {"active"}


def test_csv_with_a_header_and_with_column(mirror_url: str, tmp_path: Path) -> None:
    default = write(tmp_path, 'user,thread_id\nann,thread_a\nbob,"thread_b"\n', "a.csv")
    assert cli(mirror_url, "threads", "add", "-f", default).exit_code == 0
    named = write(tmp_path, "conv;x,owner\nthread_c,ann\n", "b.csv")
    result = cli(mirror_url, "threads", "add", "-f", named, "--column", "conv;x")
    assert result.exit_code == 0, result.output
    assert [t for t, _ in states(mirror_url)] == ["thread_a", "thread_b", "thread_c"]
    missing = cli(mirror_url, "threads", "add", "-f", default, "--column", "conversation")
    assert missing.exit_code == 2
    assert "has no column 'conversation'" in missing.stderr


def test_bad_lines_are_named_with_line_numbers_and_nothing_is_added(
    mirror_url: str, tmp_path: Path
) -> None:
    path = write(tmp_path, "thread_a\nthred_b\n\nthread c\n-x\nthread_d\n")
    result = cli(mirror_url, "threads", "add", "-f", path)
    assert result.exit_code == 2
    err = result.stderr
    assert f"{path}:2: 'thred_b' does not start with thread_" in err
    assert f"{path}:4: 'thread c' contains whitespace" in err
    assert f"{path}:5: '-x' is not a thread id" in err
    assert "3 of 5 lines" in err
    assert "nothing was added" in err
    assert "--skip-invalid" in err
    assert "Traceback" not in result.output
    assert states(mirror_url) == []


def test_a_bad_file_leaves_no_mirror_behind(tmp_path: Path) -> None:
    """A misconfiguration never changes the mirror's state, not even by creating it."""
    db = tmp_path / "new.db"
    path = write(tmp_path, "thred_a\n")
    assert cli(f"sqlite:///{db}", "threads", "add", "-f", path).exit_code == 2
    assert not db.exists()


def test_skip_invalid_adds_the_good_ids_and_still_names_the_bad(
    mirror_url: str, tmp_path: Path
) -> None:
    path = write(tmp_path, "thread_a\nthred_b\nthread_c\n")
    result = cli(mirror_url, "threads", "add", "-f", path, "--skip-invalid")
    assert result.exit_code == 0, result.output
    assert f"{path}:2: 'thred_b'" in result.stderr
    assert "(skipped)" in result.stderr
    assert result.stdout.strip() == f"{path}: 2 ids: 2 added (1 invalid skipped)"
    assert [t for t, _ in states(mirror_url)] == ["thread_a", "thread_c"]


def test_dash_reads_standard_input(mirror_url: str) -> None:
    result = cli(mirror_url, "threads", "add", "--from-file", "-", stdin="thread_a\nthread_b\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "standard input: 2 ids: 2 added"
    bad = cli(mirror_url, "threads", "add", "-f", "-", stdin="thread_c\nnope\n")
    assert bad.exit_code == 2
    assert "standard input:2: 'nope'" in bad.stderr


def test_remove_from_file_pauses_and_counts(mirror_url: str, tmp_path: Path) -> None:
    assert cli(mirror_url, "threads", "add", "thread_a", "thread_b", "thread_c").exit_code == 0
    assert cli(mirror_url, "threads", "remove", "thread_c").exit_code == 0
    path = write(tmp_path, "thread_id\nthread_a\nthread_c\nthread_z\nthread_a\n", "r.csv")
    result = cli(mirror_url, "threads", "remove", "--from-file", path)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        f"{path}: 3 ids: 1 paused, 1 paused already, 1 not tracked (1 duplicate)"
    )
    assert states(mirror_url) == [
        ("thread_a", "paused"),
        ("thread_b", "active"),
        ("thread_c", "paused"),
    ]
    bad = cli(mirror_url, "threads", "remove", "-f", write(tmp_path, "thread_b\nx\n"))
    assert bad.exit_code == 2
    assert dict(states(mirror_url))["thread_b"] == "active"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["-"], "'-' is not a thread id; to read ids from standard input use --from-file -"),
        (["--", "-x"], "'-x' is not a thread id (it looks like an option)"),
        (["thred_abc"], "'thred_abc' does not start with thread_"),
        (["thread_ok", "thread_a b"], "'thread_a b' contains whitespace"),
    ],
)
def test_command_line_ids_are_checked_and_refused_by_name(
    mirror_url: str, args: list[str], said: str
) -> None:
    result = cli(mirror_url, "threads", "add", *args)
    assert result.exit_code == 2
    assert said in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one line, naming the id
    assert states(mirror_url) == []


def test_ids_or_a_file_but_not_both_nor_neither(mirror_url: str, tmp_path: Path) -> None:
    path = write(tmp_path, "thread_a\n")
    both = cli(mirror_url, "threads", "add", "thread_b", "-f", path)
    assert both.exit_code == 2
    assert "not both" in both.stderr
    neither = cli(mirror_url, "threads", "add")
    assert neither.exit_code == 2
    assert "--from-file" in neither.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["sync", "--thread", "thred_x"],
        ["export", "-o", "-", "--thread", "thread_ok", "-t", "thread x"],
        ["metadata", "set", "thred_x", "msg_a", "k=v"],
        ["metadata", "set", "thread_a", "thread_b", "k=v"],
        ["metadata", "show", "thread_a", "msg_a b"],
    ],
)
def test_ids_are_checked_wherever_a_user_gives_one(tmp_path: Path, args: list[str]) -> None:
    db = tmp_path / "m.db"
    result = cli(f"sqlite:///{db}", *args)
    assert result.exit_code == 2, result.output
    assert "id" in result.stderr
    assert "Traceback" not in result.output
    assert not db.exists()
