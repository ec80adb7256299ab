"""Operator experience: progress, interruption, run history, listings, output streams, help.

Each test runs `threadsync` as a user does (a subprocess, a pseudo-terminal where the terminal is
the point) against the emulator on a loopback port.
"""

from __future__ import annotations

import gzip
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pexpect
import pytest
import typer.main

from tests.harness import DaemonProcess, env_for, shell_env
from worker.cli.app import app
from worker.emulator import Emulator, serve_in_thread

KEY = "sk-test-operator-7d1e"
THREADSYNC = [sys.executable, "-m", "worker"]


@pytest.fixture
def served() -> Iterator[tuple[Emulator, str]]:
    emulator = Emulator(api_key=KEY, seed=11)
    with serve_in_thread(emulator) as url:
        yield emulator, url


def user_env(url: str, db_url: str, **extra: str) -> dict[str, str]:
    return shell_env(url, KEY, db_url, **extra)


def run(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*THREADSYNC, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line must parse: that is the point of the tests that call this."""
    return [orjson.loads(line) for line in text.splitlines() if line]


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'm.db'}"


# -- progress and interruption -------------------------------------------------------------------


def test_progress_on_a_terminal_renders_updates_and_clears(
    served: tuple[Emulator, str], tmp_path: Path
) -> None:
    """On a terminal: a progress line appears, is redrawn as threads finish, and is erased at
    the end, leaving the summary."""
    emulator, url = served
    ids = emulator.seed(seed=1, threads=12, messages=40)
    # Each thread takes at least two 150 ms round trips, one thread at a time: the line is
    # redrawn (every 0.25 s) many times over the run.
    emulator.faults.latency_ms = 150
    env = user_env(url, sqlite_url(tmp_path), COLUMNS="160", LINES="40")
    assert run(env, "threads", "add", *ids).returncode == 0
    child = pexpect.spawn(
        THREADSYNC[0],
        [*THREADSYNC[1:], "sync", "--concurrency", "1"],
        env=env,
        encoding="utf-8",
        dimensions=(40, 160),
        timeout=60,
    )
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    screen = child.before
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    drawn = {int(n) for n in re.findall(r"syncing .*? (\d+)/12 threads", plain)}
    assert len(drawn) >= 2  # it moved
    # Then erased: after the last drawing comes an erase, then the summary.
    tail = screen[screen.rindex("syncing") :]
    assert "\x1b[2K" in tail
    summary = tail[tail.rindex("\x1b[2K") :]
    assert "12/12 threads ok" in summary
    assert "syncing" not in summary


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_sync_is_recorded_and_exits_130(
    served: tuple[Emulator, str], mirror_url: str, signum: int
) -> None:
    """SIGINT or SIGTERM mid-run: "interrupted: N messages saved; run again to resume", exit 130,
    the run recorded as interrupted; the next sync finishes the job."""
    emulator, url = served
    ids = emulator.seed(seed=2, threads=6, messages=300)
    emulator.faults.latency_ms = 60
    env = user_env(url, mirror_url, THREADSYNC_SYNC__PROGRESS_INTERVAL="0.05")
    assert run(env, "threads", "add", *ids).returncode == 0
    proc = subprocess.Popen(
        [*THREADSYNC, "sync", "--concurrency", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines: list[dict[str, Any]] = []
    for line in proc.stderr:
        lines.append(orjson.loads(line))
        if lines[-1]["event"] == "sync.progress" and lines[-1]["threads_done"] >= 1:
            break
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    lines += json_lines(err)
    assert proc.returncode == 130, err
    (said,) = [e for e in lines if e["event"] == "cli.notice"]
    match = re.fullmatch(r"interrupted: (\d+) messages saved; run again to resume", said["message"])
    assert match is not None
    assert int(match.group(1)) >= 300
    runs = json_lines(run(env, "runs", "--json").stdout)
    assert [(r["outcome"], r["finished_at"] is not None) for r in runs] == [("interrupted", True)]
    emulator.faults.latency_ms = 0
    again = run(env, "sync")
    assert again.returncode == 0, again.stderr
    assert "6/6 threads ok" in again.stdout
    outcomes = [r["outcome"] for r in json_lines(run(env, "runs", "--json").stdout)]
    assert outcomes == ["ok", "interrupted"]


def test_off_a_terminal_progress_is_a_log_event(
    served: tuple[Emulator, str], tmp_path: Path
) -> None:
    """Without a terminal: `sync.progress` events with the run's figures, stderr all JSON lines,
    the summary on stdout."""
    emulator, url = served
    ids = emulator.seed(seed=3, threads=4, messages=200)
    emulator.faults.latency_ms = 30
    env = user_env(url, sqlite_url(tmp_path), THREADSYNC_SYNC__PROGRESS_INTERVAL="0.02")
    assert run(env, "threads", "add", *ids, "thread_missing0").returncode == 0
    proc = run(env, "sync", "--concurrency", "1")
    assert proc.returncode == 1
    events = json_lines(proc.stderr)  # a `2>log.jsonl` file parses line by line
    progress = [e for e in events if e["event"] == "sync.progress"]
    assert progress
    assert {"threads_done", "threads", "messages", "requests", "rate", "eta_seconds"} <= set(
        progress[-1]
    )
    assert progress[-1]["threads"] == 5
    assert "4/5 threads ok" in proc.stdout
    assert "thread_missing0" in proc.stdout


def test_sync_with_nothing_tracked_says_how_to_track(tmp_path: Path) -> None:
    env = user_env("http://127.0.0.1:9", sqlite_url(tmp_path), THREADSYNC_LOG__FORMAT="console")
    proc = run(env, "sync")
    assert proc.returncode == 0
    assert "threadsync threads add" in proc.stderr
    assert "--from-file" in proc.stderr


# -- run history ------------------------------------------------------------------------------


def test_runs_lists_the_history_and_shows_one_run(
    served: tuple[Emulator, str], mirror_url: str
) -> None:
    emulator, url = served
    ids = emulator.seed(seed=4, threads=2, messages=30)
    env = user_env(url, mirror_url)
    run(env, "threads", "add", *ids, "thread_missing1")
    run(env, "sync")
    emulator.append_messages(ids[0], n=3)
    # The option's twin, named like a setting, makes this a full run (and is no unknown key).
    assert run({**env, "THREADSYNC_SYNC__FULL": "1"}, "sync").returncode == 1
    history = json_lines(run(env, "runs", "--json").stdout)
    assert [(r["kind"], r["outcome"], r["added"]) for r in history] == [
        ("full", "failed", 3),
        ("sync", "failed", 60),
    ]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", history[0]["started_at"])
    assert len(json_lines(run(env, "runs", "--limit", "1", "--json").stdout)) == 1
    shown = json_lines(run(env, "runs", "show", str(history[1]["run_id"]), "--json").stdout)
    assert shown[0]["run_id"] == history[1]["run_id"]
    assert [(t["thread_id"], t["ok"]) for t in shown[1:]] == [
        ("thread_missing1", False),
        *sorted((t, True) for t in ids),
    ]
    table = run(env, "runs", "show", str(history[1]["run_id"]))
    assert table.returncode == 0
    for thread_id in ids:
        assert thread_id in table.stdout
    missing = run(env, "runs", "show", "999")
    assert missing.returncode == 2
    assert "no run 999" in missing.stderr


# -- listings ---------------------------------------------------------------------------------


LONG_IDS = ["thread_" + "A" * 40 + str(i) for i in range(3)]


def test_tables_keep_ids_and_times_whole(served: tuple[Emulator, str], tmp_path: Path) -> None:
    """On a 50-column terminal and off a terminal alike, every id is printed whole."""
    _, url = served
    env = user_env(url, sqlite_url(tmp_path))
    run(env, "threads", "add", *LONG_IDS)
    piped = run(env, "threads", "list")
    for thread_id in LONG_IDS:
        assert thread_id in piped.stdout
    child = pexpect.spawn(
        THREADSYNC[0],
        [*THREADSYNC[1:], "status"],
        env=dict(env, COLUMNS="50"),
        encoding="utf-8",
        dimensions=(40, 50),
        timeout=60,
    )
    child.expect(pexpect.EOF)
    screen = child.before
    for thread_id in LONG_IDS:
        assert thread_id in screen
    listed = json_lines(run(env, "threads", "list", "--json").stdout)
    assert [t["thread_id"] for t in listed] == LONG_IDS


# -- export format ------------------------------------------------------------------------------


def test_export_takes_its_format_from_the_file_name(
    served: tuple[Emulator, str], tmp_path: Path
) -> None:
    emulator, url = served
    ids = emulator.seed(seed=5, threads=1, messages=5)
    env = user_env(url, sqlite_url(tmp_path))
    run(env, "threads", "add", *ids)
    run(env, "sync")
    assert run(env, "export", "-o", str(tmp_path / "x.csv")).returncode == 0
    assert (tmp_path / "x.csv").read_text().startswith("thread_id,message_id,")
    assert run(env, "export", "-o", str(tmp_path / "x.md.gz")).returncode == 0
    assert gzip.decompress((tmp_path / "x.md.gz").read_bytes()).startswith(b"#")
    assert run(env, "export", "-o", str(tmp_path / "x.JSONL")).returncode == 0
    assert len(json_lines((tmp_path / "x.JSONL").read_text())) == 5
    clash = run(env, "export", "-o", str(tmp_path / "y.csv"), "--format", "jsonl")
    assert clash.returncode == 2
    assert "y.csv names a csv file but --format is jsonl" in clash.stderr
    assert not (tmp_path / "y.csv").exists()
    free = run(env, "export", "-o", str(tmp_path / "z.txt"), "--format", "csv")
    assert free.returncode == 0
    assert (tmp_path / "z.txt").read_text().startswith("thread_id,")


# -- backups ------------------------------------------------------------------------------------


def test_backup_list_shows_totals_and_restore_takes_the_newest(
    served: tuple[Emulator, str], tmp_path: Path
) -> None:
    """`backup list --json` carries the manifest totals; `restore DEST/latest` (or DEST) picks
    the newest snapshot; backup and restore agree on their counts."""
    emulator, url = served
    ids = emulator.seed(seed=6, threads=2, messages=20)
    env = user_env(url, sqlite_url(tmp_path))
    run(env, "threads", "add", *ids)
    run(env, "sync")
    first = emulator.truth()["threads"][ids[0]][0]["id"]
    emulator.delete_message(ids[0], first)
    run(env, "sync", "--full")
    dest = tmp_path / "b"
    made = run(env, "backup", "--dest", str(dest), "--no-sync")
    assert made.returncode == 0, made.stderr
    assert "39 messages (1 deleted)" in made.stdout
    (snap,) = json_lines(run(env, "backup", "list", str(dest), "--json").stdout)
    assert (snap["threads"], snap["messages"], snap["deleted"], snap["complete"]) == (
        2,
        39,
        1,
        True,
    )
    assert snap["bytes"] > 0
    listed = run(env, "backup", "list", str(dest))
    assert snap["snapshot"] in listed.stdout
    restored = run(env, "restore", str(dest / "latest"), "--database-url", sqlite_url(dest))
    assert restored.returncode == 0, restored.stderr
    assert "restored 39 messages (1 deleted)" in restored.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    none = run(env, "restore", str(empty), "--database-url", f"sqlite:///{tmp_path / 'r2.db'}")
    assert none.returncode == 2
    assert "no complete snapshot" in none.stderr


# -- the daemon -----------------------------------------------------------------------------------


def test_check_reports_a_daemon_that_stopped(served: tuple[Emulator, str], tmp_path: Path) -> None:
    """After a clean stop, `threadsync check` says so at once (no fresh-heartbeat grace); an
    empty mirror makes the daemon warn that nothing is tracked."""
    emulator, url = served
    db_url = sqlite_url(tmp_path)
    env = env_for(url, emulator, db_url)
    daemon = DaemonProcess(env, tmp_path / "daemon.log")
    try:
        daemon.wait_event("daemon.no_threads")
        assert run(env, "check").returncode == 0
        assert daemon.terminate(timeout=30) == 0
    finally:
        daemon.close()
    check = run(env, "check")
    assert check.returncode == 1
    assert re.search(r"the daemon \(pid \d+\) stopped at \d{4}-", check.stderr)
    quiet = [e["event"] for e in daemon.events()]
    assert "push.started" not in quiet
    assert "push.finished" not in quiet


# -- help ---------------------------------------------------------------------------------------


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command of the tree (Typer ships its own click: go by shape, not by class)."""
    yield path, command
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))


GLOBAL_VARIABLES = {
    "THREADSYNC_CONFIG",
    "THREADSYNC_DATABASE_URL",
    "THREADSYNC_QUIET",
    "THREADSYNC_VERBOSE",
    "THREADSYNC_DEBUG",
    "THREADSYNC_LOG_LEVEL",  # the name issue 16 asks for, beside THREADSYNC_LOG__LEVEL
}


def test_help_names_variables_whole_in_one_scheme_without_bool_metavars() -> None:
    """Every command's --help: no `<bool>`, every variable name unbroken; every variable is
    THREADSYNC_<SECTION>__<NAME> (or one of the few global ones)."""
    root = typer.main.get_command(app)
    seen = 0
    for path, command in _commands(root):
        ctx = command.context_class(
            command, info_name=" ".join(("threadsync", *path)), terminal_width=80
        )
        text = command.get_help(ctx)
        assert "<bool>" not in text, path
        for param in command.params:
            names = param.envvar if isinstance(param.envvar, list) else [param.envvar]
            for name in filter(None, names):
                seen += 1
                assert name in text, (path, name)  # whole, not wrapped or cut
                assert name in GLOBAL_VARIABLES or re.fullmatch(
                    r"THREADSYNC_[A-Z]+__[A-Z_]+", name
                ), (path, name)
        for param in command.params:
            if param.param_type_name == "option" and param.name not in {
                "help",
                "version",
                "install_completion",
                "show_completion",
            }:
                assert param.envvar, (path, param.name)  # every option has its twin
    assert seen > 30
