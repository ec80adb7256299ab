"""Issue 16, points 8 and 9: every failure is one clear line with the documented exit code, never
a traceback; mistakes (misspelt variables, unknown keys, read-only commands on no mirror, an
unknown --thread, edits that failed earlier) are said, never passed over silently."""

from __future__ import annotations

import errno
import functools
import importlib
import io
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import psycopg
import pytest
import structlog
import typer
from pydantic import BaseModel
from sqlalchemy import create_engine, event, inspect, text
from typer.testing import CliRunner

import worker.store.db as store_db
from worker import logs
from worker.cli import common
from worker.cli.app import app
from worker.cli.variables import HARNESS_PREFIXES, unknown_variables
from worker.config import (
    ApiSettings,
    Settings,
    load_settings,
    setting_paths,
    setting_variables,
)
from worker.daemon.jobs import JobRunner
from worker.emulator import Emulator, serve_in_thread
from worker.errors import ConfigError, StoreError
from worker.outbox import set_metadata
from worker.store.db import Mirror, translate_store_error
from worker.store.repo import add_threads

KEY = "sk-test-hardening-7d1e"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No variable of the machine running the tests leaks in; the cwd is a fresh directory."""
    for name in list(os.environ):
        if name.startswith(("AZURE_", "OPENAI_")) or (
            name.startswith("THREADSYNC_") and not name.startswith(HARNESS_PREFIXES)
        ):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(common._debug, "on", False)  # a --debug run earlier sets it per process
    yield
    structlog.reset_defaults()


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env=env)


def error_lines(result: Any) -> list[str]:
    """The stderr lines, asserting there is no traceback among them."""
    assert "Traceback" not in result.output
    return [line for line in result.stderr.splitlines() if line.strip()]


def one_error(result: Any, code: int) -> str:
    """The single stderr line of a failed command with exit ``code``."""
    lines = error_lines(result)
    assert result.exit_code == code, result.output
    assert len(lines) == 1, lines
    return as_error_line(lines[0])


def as_error_line(line: str) -> str:
    """``error: ...`` as a terminal shows it; off a terminal stderr holds JSON log records only,
    and the same sentence is the ``message`` of one ``cli.notice`` record at level error."""
    if line.startswith("{"):
        record = orjson.loads(line)
        assert (record["event"], record["level"]) == ("cli.notice", "error"), record
        return f"error: {record['message']}"
    assert line.startswith("error: ")
    return line


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


# -- point 8: the mirror's location ---------------------------------------------------------------


def test_sqlite_url_with_two_slashes_is_named(tmp_path: Path) -> None:
    line = one_error(
        invoke("--database-url", "sqlite://mirror.db", "threads", "add", "thread_1"), 2
    )
    assert "two slashes" in line
    assert "sqlite:///mirror.db" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("where", "said"),
    [("/proc/threadsync-test/mirror.db", "does not exist"), ("/proc/mirror.db", "cannot create")],
)
def test_mirror_under_proc_is_one_line(where: str, said: str) -> None:
    line = one_error(
        invoke("--database-url", f"sqlite:///{where}", "threads", "add", "thread_1"), 2
    )
    assert said in line
    assert os.path.dirname(where) in line


def test_mirror_under_a_regular_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    url = sqlite_url(tmp_path / "plain" / "m.db")
    line = one_error(invoke("--database-url", url, "threads", "add", "thread_1"), 2)
    assert "is a file, not a directory" in line


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_mirror_in_a_read_only_directory_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """(Tests run as root, whom permissions do not stop: the refusal is simulated.)"""

    def refuse(*_: Any, **__: Any) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "open", refuse)
    line = one_error(invoke("--database-url", sqlite_url(tmp_path / "m.db"), "sync"), 2)
    assert "the directory is read-only" in line


def test_a_file_that_is_not_sqlite_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "notes.db"
    bad.write_bytes(b"this is not a database at all, just text\n" * 50)
    line = one_error(invoke("--database-url", sqlite_url(bad), "sync"), 2)
    assert "is not a SQLite database" in line
    assert bad.read_bytes().startswith(b"this is not")


def test_config_naming_a_directory_is_one_line(tmp_path: Path) -> None:
    line = one_error(invoke("--config", str(tmp_path), "status"), 2)
    assert "is a directory" in line


# -- point 8: the API key -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (KEY[:5] + "\u00e9" + KEY[5:], "non-ASCII"),
        (KEY[:5] + "\u00a0" + KEY[5:], "non-ASCII"),
        (KEY[:5] + "\x07" + KEY[5:], "control character"),
        (KEY[:5] + " " + KEY[5:], "space"),
    ],
)
@pytest.mark.parametrize("variable", ["AZURE_OPENAI_API_KEY", "THREADSYNC_API__API_KEY"])
def test_a_bad_character_in_the_key_is_refused_by_name(
    tmp_path: Path, variable: str, value: str, said: str
) -> None:
    env = {variable: value, "AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:9"}
    line = one_error(invoke("--database-url", sqlite_url(tmp_path / "m.db"), "sync", env=env), 2)
    assert variable in line
    assert said in line
    assert KEY[:5] not in line  # the key is never echoed
    assert KEY[5:] not in line


def test_a_bad_character_in_a_key_file_is_refused_by_name(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n" + "second line\n")
    api = ApiSettings(api_key_file=key_file)
    with pytest.raises(ConfigError) as caught:
        api.secret()
    assert str(key_file) in str(caught.value)
    assert "control character" in str(caught.value)
    assert KEY not in str(caught.value)


def test_surrounding_whitespace_is_stripped_from_the_key(tmp_path: Path) -> None:
    """A key pasted with a newline (or a key file ending in one) syncs as the key itself."""
    emulator = Emulator(api_key=KEY, seed=3)
    (thread,) = emulator.seed(seed=4, threads=1, messages=5)
    url = sqlite_url(tmp_path / "m.db")
    with serve_in_thread(emulator) as base:
        env = {"AZURE_OPENAI_ENDPOINT": base, "AZURE_OPENAI_API_KEY": f"  {KEY}\n"}
        assert invoke("--database-url", url, "threads", "add", thread).exit_code == 0
        done = invoke("--database-url", url, "sync", env=env)
        assert done.exit_code == 0, done.output
        key_file = tmp_path / "key"
        key_file.write_text(KEY + "\r\n")
        env = {"AZURE_OPENAI_ENDPOINT": base, "THREADSYNC_API__API_KEY_FILE": str(key_file)}
        done = invoke("--database-url", url, "sync", env=env)
        assert done.exit_code == 0, done.output
    settings = load_settings(None, api={"api_key": f"\t{KEY}\n"})
    assert settings.api.api_key is not None
    assert settings.api.api_key.get_secret_value() == KEY


# -- point 8: disk full during a sync -------------------------------------------------------------


def test_disk_full_during_a_sync_says_the_mirror_is_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database file cannot grow (SQLITE_FULL, as on a full disk) part-way through a first
    sync: one line, exit 1, the mirror opens and is whole, and no message text is printed."""
    marker = "zq" + uuid.uuid4().hex
    emulator = Emulator(api_key=KEY, seed=3)
    (thread,) = emulator.seed(seed=4, threads=1, messages=400)
    emulator.create_message(thread, {"role": "user", "content": marker * 40})
    db = tmp_path / "m.db"
    url = sqlite_url(db)
    assert invoke("--database-url", url, "threads", "add", thread).exit_code == 0
    with sqlite3.connect(db) as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
    real_engine = store_db._sqlite_engine

    def capped(*args: Any, **kwargs: Any) -> Any:
        engine = real_engine(*args, **kwargs)

        @event.listens_for(engine, "connect")
        def _cap(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.execute(f"PRAGMA max_page_count={pages + 8}")

        return engine

    monkeypatch.setattr(store_db, "_sqlite_engine", capped)
    with serve_in_thread(emulator) as base:
        env = {"AZURE_OPENAI_ENDPOINT": base, "AZURE_OPENAI_API_KEY": KEY}
        result = invoke("--database-url", url, "--log-level", "error", "sync", env=env)
    # The thread's pass failed on it: the run's summary (stdout) names the thread and says so.
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    (line,) = [ln for ln in result.stdout.splitlines() if ln.strip().startswith(f"{thread}: ")]
    assert "disk holding the mirror is full" in line
    assert "the mirror is intact" in line
    assert "free space and run again" in line
    assert marker not in result.output
    monkeypatch.setattr(store_db, "_sqlite_engine", real_engine)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    listed = invoke("--database-url", url, "threads", "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert thread in listed.stdout


def test_a_wrong_postgresql_url_is_a_configuration_error(pg_url: str) -> None:
    wrong = pg_url.replace("/postgres?", "/threadsync_no_such_database?")
    line = one_error(invoke("--database-url", wrong, "status"), 2)
    assert 'database "threadsync_no_such_database" does not exist' in line
    assert "postgresql://postgres@127.0.0.1" in line


def test_disk_full_on_postgresql_is_translated() -> None:
    """PostgreSQL's disk_full (53100), as psycopg raises it, inside a task group's group."""
    failure = ExceptionGroup("task group", [psycopg.errors.DiskFull("could not extend file")])
    found = translate_store_error(failure)
    assert isinstance(found, StoreError)
    assert "disk is full" in str(found)
    assert "the mirror is intact" in str(found)


@pytest.mark.parametrize(
    ("code", "kind", "said"),
    [
        (13, StoreError, "is full"),  # SQLITE_FULL
        (8, ConfigError, "read-only"),  # SQLITE_READONLY
        (778, StoreError, "the disk failed"),  # SQLITE_IOERR_WRITE
        (11, StoreError, "damaged"),  # SQLITE_CORRUPT
    ],
)
def test_sqlite_resource_errors_are_translated(code: int, kind: type, said: str) -> None:
    error = sqlite3.OperationalError("database trouble")
    error.sqlite_errorcode = code
    found = translate_store_error(error)
    assert isinstance(found, kind)
    assert said in str(found)


# -- point 8: one top-level handler; no message content in tracebacks or logs ---------------------


def _exploding(marker: str) -> Any:
    def explode(*_: Any, **__: Any) -> Any:
        raise RuntimeError(f'cannot read row {{"content": "{marker}"}}')

    return explode


def test_an_unexpected_error_is_one_line_and_the_debug_traceback_is_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = "zq" + uuid.uuid4().hex
    url = sqlite_url(tmp_path / "m.db")
    Mirror(url).dispose()
    monkeypatch.setattr("worker.cli.threads.thread_statuses", _exploding(marker))
    plain = invoke("--database-url", url, "threads", "list")
    line = one_error(plain, 1)
    assert "unexpected RuntimeError" in line
    assert "--debug" in line
    assert marker not in plain.output
    debug = invoke("--database-url", url, "--debug", "threads", "list")
    assert debug.exit_code == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "in explode" in debug.stderr  # the frames are all there
    assert marker not in debug.output
    for variable, value in (("THREADSYNC_DEBUG", "1"), ("THREADSYNC_LOG_LEVEL", "debug")):
        via_variable = invoke("--database-url", url, "threads", "list", env={variable: value})
        assert via_variable.exit_code == 1
        assert "Traceback (most recent call last)" in via_variable.stderr
        assert marker not in via_variable.output


def test_the_config_files_log_level_applies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`[log] level = "debug"` in the TOML file is not ignored: the traceback is shown."""
    url = sqlite_url(tmp_path / "m.db")
    Mirror(url).dispose()
    config = tmp_path / "threadsync.toml"
    config.write_text('[log]\nlevel = "debug"\n')
    monkeypatch.setattr("worker.cli.threads.thread_statuses", _exploding("zq"))
    result = invoke("--database-url", url, "--config", str(config), "threads", "list")
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr


def test_a_file_system_refusal_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = sqlite_url(tmp_path / "m.db")
    Mirror(url).dispose()

    def refuse(*_: Any, **__: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", "/srv/out/x.jsonl")

    monkeypatch.setattr("worker.cli.threads.thread_statuses", refuse)
    line = one_error(invoke("--database-url", url, "threads", "list"), 1)
    assert line == "error: Permission denied: /srv/out/x.jsonl"


def test_the_entry_point_handles_what_escapes_the_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = "zq" + uuid.uuid4().hex
    app_module = importlib.import_module("worker.cli.app")  # the package's `app` is the Typer
    monkeypatch.setattr(app_module, "app", _exploding(marker))
    with pytest.raises(SystemExit) as caught:
        app_module.main()
    assert caught.value.code == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "unexpected RuntimeError" in err
    assert marker not in err
    assert "Traceback" not in err


@pytest.mark.anyio
async def test_job_failed_never_logs_message_content_or_sql_parameters(mirror_url: str) -> None:
    """The daemon's job_failed: a failing statement whose parameter is a message's JSON, and an
    error whose text quotes it; the marker is nowhere in the log, even at debug level."""
    marker = "zq" + uuid.uuid4().hex
    payload = '{"id": "msg_1", "content": [{"text": {"value": "' + marker + '"}}]}'
    mirror = Mirror(mirror_url)
    buffer = io.StringIO()
    logs.configure(level="debug", json=True, stream=buffer)

    async def failing_statement() -> None:
        def write() -> None:
            with mirror.write() as session:
                session.execute(
                    text("INSERT INTO no_such_table (raw) VALUES (:raw)"), {"raw": payload}
                )

        await mirror.run_write(write)

    async def failing_parse() -> None:
        raise ValueError(f"unexpected message {payload}")

    runner = JobRunner()
    await runner.wrap("sync", failing_statement)()
    await runner.wrap("push", failing_parse)()
    mirror.dispose()
    log = buffer.getvalue()
    assert log.count("daemon.job_failed") == 2
    assert "Traceback" in log  # the debug-level traceback is there, redacted
    assert marker not in log


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["sync", "--concurrency", "0"], "Invalid value for '--concurrency'"),
        (["sync", "--bogus"], "No such option: --bogus"),
        (["nosuch"], "No such command 'nosuch'"),
        (["metadata", "set"], "Missing argument 'thread_id'"),
        (["emulator", "--ties", "sideways"], "--ties must be one of"),
    ],
)
def test_a_usage_error_is_one_line(args: list[str], said: str) -> None:
    line = one_error(invoke(*args), 2)
    assert said in line
    assert line.endswith("--help`")


def test_no_arguments_still_prints_the_help() -> None:
    result = invoke()
    assert result.exit_code == 2
    assert "Usage" in result.output
    assert "threads" in result.output


# -- point 9: misspelt variables and unknown keys -------------------------------------------------


def test_a_misspelt_database_variable_creates_no_mirror(tmp_path: Path) -> None:
    env = {"THREADSYNC_DATABSE_URL": sqlite_url(tmp_path / "wanted.db")}
    line = one_error(invoke("threads", "add", "thread_abc", env=env), 2)
    assert line == (
        "error: unknown variable THREADSYNC_DATABSE_URL; did you mean THREADSYNC_DATABASE_URL?"
    )
    assert list(tmp_path.iterdir()) == []  # no threadsync.db in the current directory


@pytest.mark.parametrize(
    ("variable", "meant"),
    [
        ("THREADSYNC_SYNC__CONCURENCY", "THREADSYNC_SYNC__CONCURRENCY"),
        ("THREADSYNC_SYNC_CONCURRENCY", "THREADSYNC_SYNC__CONCURRENCY"),
        ("THREADSYNC_EXPORT__FROMAT", "THREADSYNC_EXPORT__FORMAT"),
        ("threadsync_api__endpiont", "THREADSYNC_API__ENDPOINT"),
    ],
)
def test_a_misspelt_variable_names_the_closest(tmp_path: Path, variable: str, meant: str) -> None:
    url = sqlite_url(tmp_path / "m.db")
    line = one_error(invoke("--database-url", url, "status", env={variable: "2"}), 2)
    assert f"did you mean {meant}?" in line
    assert variable in line


def test_the_settings_refuse_an_unknown_nested_variable_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """load_settings (the library's way in, without the CLI's check) drops nothing either."""
    monkeypatch.setenv("THREADSYNC_SYNC__CONCURENCY", "2")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "unknown variable THREADSYNC_SYNC__CONCURENCY; did you mean THREADSYNC_SYNC__CONCURRENCY?"
    )


def test_unknown_config_keys_are_named(tmp_path: Path) -> None:
    config = tmp_path / "threadsync.toml"
    config.write_text("[sync]\nconcurency = 2\n")
    line = one_error(invoke("--config", str(config), "status"), 2)
    assert "unknown setting sync.concurency" in line
    assert "did you mean sync.concurrency?" in line
    assert "Extra inputs" not in line
    config.write_text('databse_url = "sqlite:///x.db"\n')
    line = one_error(invoke("--config", str(config), "status"), 2)
    assert "unknown setting databse_url" in line
    assert "did you mean database_url?" in line
    config.write_text("[snyc]\nconcurrency = 2\n")
    line = one_error(invoke("--config", str(config), "status"), 2)
    assert "unknown setting snyc" in line
    assert "did you mean sync?" in line


def test_every_settings_section_refuses_unknown_keys() -> None:
    """A section added later must subclass ``worker.config.Section`` (pydantic would otherwise
    drop a misspelt key in it silently)."""
    for path in setting_paths(Settings):
        kind = _annotation(path)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            assert kind.model_config.get("extra") == "forbid", ".".join(path)


def _annotation(path: tuple[str, ...]) -> Any:
    model: Any = Settings
    for part in path:
        model = model.model_fields[part].annotation
    return model


def test_known_and_harness_variables_pass(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "m.db")
    Mirror(url).dispose()
    env = {
        "THREADSYNC_DATABASE_URL": url,
        "THREADSYNC_LOG_LEVEL": "warning",
        "THREADSYNC_LOG__FORMAT": "json",
        "THREADSYNC_SYNC__PAGE_LIMIT": "50",
        "THREADSYNC_EMULATOR__PORT": "8081",
        "THREADSYNC_BENCH_SCALE": "1",
        "THREADSYNC_CONVERGENCE_EXAMPLES": "3",
        "THREADSYNC_REQUIRE_POSTGRES": "0",
    }
    done = invoke("status", env=env)
    assert done.exit_code == 0, done.output


def test_valid_names_are_derived_from_settings_and_options() -> None:
    """A field or an option another change adds is valid with no list to update."""

    class Api(ApiSettings):
        probe_budget: float = 30.0

    class Discover(BaseModel):
        interval: float = 60.0

    class Extended(Settings):
        api: Api = Api()
        discover: Discover = Discover()

    names = setting_variables(Extended)
    assert {"THREADSYNC_API__PROBE_BUDGET", "THREADSYNC_DISCOVER__INTERVAL"} <= names
    assert "THREADSYNC_API__PROBE_BUDGET" not in setting_variables()

    extra = typer.Typer()

    @extra.command()
    def discover(
        limit: int = typer.Option(1, envvar="THREADSYNC_DISCOVER_LIMIT"),
        since: str = typer.Option("", envvar=["THREADSYNC_DISCOVER_SINCE", "TS_SINCE"]),
    ) -> None:
        """A command another change adds."""

    @extra.command()
    def other() -> None:
        """A second command, so the app is a group."""

    env = {"THREADSYNC_DISCOVER_LIMIT": "2", "THREADSYNC_DISCOVER_SINCE": "x"}
    assert unknown_variables(typer.main.get_command(extra), env) == []
    assert unknown_variables(typer.main.get_command(app), env) == sorted(env)


# -- point 9: read-only commands never create a mirror --------------------------------------------


NEEDS_A_MIRROR = [
    ["status"],
    ["threads", "list"],
    ["export", "--out", "out.jsonl"],
    ["export", "--out", "out.jsonl", "--sync"],
    ["metadata", "show", "thread_abc", "msg_abc"],
    # Commands that write, but only to what a mirror already holds:
    ["metadata", "set", "thread_abc", "msg_abc", "k=v"],
    ["threads", "remove", "thread_abc"],
    ["push"],
    ["backup", "--dest", "backups", "--no-sync"],
]


def _tables(url: str) -> list[str]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        return inspect(engine).get_table_names()
    finally:
        engine.dispose()


@pytest.mark.parametrize("args", NEEDS_A_MIRROR, ids=" ".join)
def test_commands_that_need_a_mirror_never_create_one(
    mirror_url: str, tmp_path: Path, args: list[str]
) -> None:
    env = {"AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:9", "AZURE_OPENAI_API_KEY": KEY}
    (tmp_path / "backups").mkdir()
    result = invoke("--database-url", mirror_url, *args, env=env)
    line = one_error(result, 2)
    assert "error: no mirror at " in line
    assert "`threadsync threads add ID`" in line
    assert "`threadsync sync`" in line
    if mirror_url.startswith("sqlite"):
        assert sorted(p.name for p in tmp_path.rglob("*")) == ["backups"]
        assert str(tmp_path / "mirror.db") in line
    else:
        assert _tables(mirror_url) == []
        assert "no mirror at postgresql://postgres@127.0.0.1:5432/postgres?" in line


def test_db_current_creates_no_mirror(mirror_url: str, tmp_path: Path) -> None:
    result = invoke("--database-url", mirror_url, "db", "current")
    if mirror_url.startswith("sqlite"):
        assert "error: no mirror at " in one_error(result, 2)
        assert list(tmp_path.iterdir()) == []
    else:
        assert result.exit_code == 0, result.output
        assert "mirror: empty" in result.stdout
        assert _tables(mirror_url) == []


def test_backup_list_opens_no_mirror(tmp_path: Path) -> None:
    (tmp_path / "backups").mkdir()
    result = invoke("backup", "list", str(tmp_path / "backups"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backups"]


# -- point 9: export --thread naming a thread the mirror does not hold ----------------------------


def test_export_of_a_thread_the_mirror_does_not_hold_exits_2(
    mirror_url: str, tmp_path: Path
) -> None:
    mirror = Mirror(mirror_url)
    with mirror.write() as session:
        add_threads(session, ["thread_held"])
    mirror.dispose()
    out = tmp_path / "out.jsonl"
    args = ["--database-url", mirror_url, "export", "--out", str(out)]
    line = one_error(invoke(*args, "--thread", "thread_held", "--thread", "thread_nope"), 2)
    assert "--thread thread_nope: the mirror holds no such thread" in line
    assert not out.exists()
    done = invoke(*args, "--thread", "thread_held")
    assert done.exit_code == 0, done.output  # tracked, not synced yet: an empty export is right


# -- point 9: push mentions edits that failed earlier ---------------------------------------------


def test_push_mentions_edits_that_failed_earlier(mirror_url: str) -> None:
    from tests.outbox.conftest import make_world  # noqa: PLC0415 - the outbox tests' world

    mirror = Mirror(mirror_url)
    world = anyio.run(functools.partial(make_world, mirror, threads=1, messages=3))
    thread = world.thread_ids[0]
    first, second = (m["id"] for m in world.messages(thread)[:2])
    set_metadata(mirror, thread, first, set={"label": "a"})
    with mirror.write() as session:
        session.execute(
            text("UPDATE metadata_edit SET state = 'failed', last_error = 'HTTP 400: bad'")
        )
    set_metadata(mirror, thread, second, set={"label": "b"})
    mirror.dispose()
    args = ["--database-url", mirror_url, "--log-level", "error", "push"]
    with serve_in_thread(world.emulator) as base:
        env = {"AZURE_OPENAI_ENDPOINT": base, "AZURE_OPENAI_API_KEY": world.emulator.api_key}
        result = invoke(*args, env=env)
        retried = invoke(*args, "--retry-failed", env=env)
    assert result.exit_code == 0, result.output
    assert "1 applied" in result.stdout  # what was done: stdout
    assert "1 edit failed on an earlier push" in result.stderr  # a caveat: stderr
    assert "threadsync push --retry-failed" in result.stderr
    assert retried.exit_code == 0, retried.output
    assert "1 applied" in retried.stdout
    assert "earlier" not in retried.stderr
