"""The services' id syntax (worker.ids) and the id-file reader (worker.idfile)."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.errors import ConfigError
from worker.idfile import BadLine, parse_ids, read_ids
from worker.ids import check_id, check_ids, id_problem, is_valid


@pytest.mark.parametrize(
    "value",
    [
        "thread_abc123",
        "thread_" + "aZ09" * 6,  # the services' 24 letters and digits
        "thread_1",
        "thread_a_b-c",  # tolerated: underscores and dashes, in case some ids carry them
        "thread_" + "x" * 121,  # the longest the mirror holds (128)
    ],
)
def test_well_formed_thread_ids_pass(value: str) -> None:
    assert is_valid(value)
    assert id_problem(value) is None
    assert check_id(value) == value


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("", "empty"),
        ("-", "--from-file -"),
        ("-x", "looks like an option"),
        ("--thread", "looks like an option"),
        ("thred_abc", "does not start with thread_"),
        ("Thread_abc", "does not start with thread_"),
        ("abc123", "does not start with thread_"),
        ("msg_abc", "is a message id"),
        ("thread_", "nothing after thread_"),
        (" thread_abc", "whitespace"),
        ("thread_abc ", "whitespace"),
        ("thread_a\tb", "whitespace"),
        ("thread_a/b", "characters no thread id has"),
        ("thread_a?b=c", "characters no thread id has"),
        ("thread_a%2Fb", "characters no thread id has"),
        ("thread_\x00", "characters no thread id has"),
        ("thread_é", "characters no thread id has"),
        ("thread_\U0001f600", "characters no thread id has"),
        ("thread_" + "x" * 122, "at most 128"),
    ],
)
def test_malformed_thread_ids_are_refused_by_name(value: str, said: str) -> None:
    problem = id_problem(value)
    assert problem is not None
    assert said in problem
    with pytest.raises(ConfigError, match="thread"):
        check_id(value)


def test_a_refused_id_is_quoted_visibly_and_cut_when_long() -> None:
    """Control characters show escaped; a huge value never floods the message."""
    assert "\\x00" in (id_problem("thread_\x00") or "")
    assert len(id_problem("x" * 100_000) or "") < 200


def test_message_ids_have_their_own_prefix() -> None:
    assert is_valid("msg_abc123", "message")
    assert not is_valid("thread_abc123", "message")
    assert "is a thread id, not a message id" in (id_problem("thread_abc", "message") or "")
    assert "does not start with msg_" in (id_problem("mesg_abc", "message") or "")


def test_check_ids_names_the_first_bad_one() -> None:
    assert check_ids(["thread_a", "thread_b"]) == ["thread_a", "thread_b"]
    with pytest.raises(ConfigError, match="'thred_b'"):
        check_ids(["thread_a", "thred_b", "x"])


# -- the file reader -----------------------------------------------------------------------------


def test_one_id_per_line_with_comments_blanks_duplicates_and_crlf() -> None:
    text = "# exported 2026-12-01\r\nthread_a\r\n\r\n  thread_b  \r\n#thread_c\r\nthread_a\r\n"
    ids = parse_ids(text, source="f")
    assert ids.ids == ["thread_a", "thread_b"]
    assert ids.duplicates == 1
    assert ids.bad == []


def test_bad_lines_are_recorded_with_their_line_numbers() -> None:
    text = "thread_a\nthred_b\n\n# note\nthread a\nthread_c\n-x\n"
    ids = parse_ids(text, source="f")
    assert ids.ids == ["thread_a", "thread_c"]
    assert [b.line for b in ids.bad] == [2, 5, 7]
    assert "thred_b" in ids.bad[0].problem
    assert ids.lines_with_ids == 5


def test_csv_with_a_header_takes_the_thread_id_column() -> None:
    text = 'user,thread_id,note\nann,thread_a,"x, y"\nbob, thread_b ,z\ncy,thread_a,\n'
    ids = parse_ids(text, source="f")
    assert ids.ids == ["thread_a", "thread_b"]
    assert ids.duplicates == 1


def test_a_single_column_csv_header_is_recognised() -> None:
    assert parse_ids("thread_id\nthread_a\n", source="f").ids == ["thread_a"]


def test_column_names_another_header_column() -> None:
    text = "conversation,owner\nthread_a,ann\nthred_b,bob\nshort\n"
    ids = parse_ids(text, source="f", column="conversation")
    assert ids.ids == ["thread_a"]
    assert ids.bad[0] == BadLine(3, ids.bad[0].problem)
    assert "thred_b" in ids.bad[0].problem
    assert ids.bad[1].line == 4
    assert "'short' does not start with thread_" in ids.bad[1].problem


def test_a_csv_header_without_the_column_is_refused_naming_the_columns() -> None:
    with pytest.raises(ConfigError, match=r"f:2: the header \(a, b\) has no column 'thread_id'"):
        parse_ids("# c\na,b\nthread_a,1\n", source="f")
    with pytest.raises(ConfigError, match="has no column 'conv'"):
        parse_ids("thread_a\n", source="f", column="conv")


def test_a_row_too_short_for_the_column_is_a_bad_line() -> None:
    ids = parse_ids("a,thread_id\nthread_x\nb,thread_b\n", source="f")
    assert ids.ids == ["thread_b"]
    assert ids.bad[0].line == 2
    assert "no thread_id field" in ids.bad[0].problem


def test_an_empty_file_has_no_ids() -> None:
    ids = parse_ids("\n# nothing\n\n", source="f")
    assert (ids.ids, ids.duplicates, ids.bad) == ([], 0, [])


def test_files_that_cannot_be_read_are_named(tmp_path: Path) -> None:
    """Missing, a directory, not UTF-8 (with the line), a spreadsheet's BOM is fine."""
    with pytest.raises(ConfigError, match="no such file"):
        read_ids(str(tmp_path / "nope.txt"))
    with pytest.raises(ConfigError, match="is a directory"):
        read_ids(str(tmp_path))
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"thread_a\nthread_\xe9\n")
    with pytest.raises(ConfigError, match=r"latin.txt:2: not UTF-8"):
        read_ids(str(latin))
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbfthread_id,x\nthread_a,1\n")
    assert read_ids(str(bom)).ids == ["thread_a"]
